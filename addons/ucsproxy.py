"""mitmdump entry point for ucsproxy.

    mitmdump -s addons/ucsproxy.py --set ucs_mode=record --set ucs_db=recordings/ucsproxy.db
    mitmdump -s addons/ucsproxy.py --mode reverse:http://127.0.0.1:1 \
        --set connection_strategy=lazy --set ucs_mode=mock

All the work is in the ``ucsproxy`` package; this file only hands mitmproxy its
addons, one per concern in their order (``ucsproxy.addon.default_addons``), as one
addon in mitmproxy's chain (``ucsproxy.addon.UcsProxy``).
"""

import os
import sys

# mitmproxy puts this script's folder first on sys.path while loading it, and
# (mitmproxy 11 and 12) leaves it there. There this very file shadows the
# ``ucsproxy`` package: for the import below, and for every process started
# later with the "spawn" method, which inherits sys.path (the log's writer
# process would fail to start). Take the folder off sys.path for good, and fall
# back to the checkout this file lives in when the package is not installed.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
try:
    from ucsproxy.addon import UcsProxy
except ModuleNotFoundError as e:
    if e.name != "ucsproxy":
        raise
    sys.path.append(os.path.dirname(_here))
    from ucsproxy.addon import UcsProxy

addons = [UcsProxy()]
