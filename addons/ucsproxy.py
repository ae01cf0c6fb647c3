"""mitmdump entry point for ucsproxy.

    mitmdump -s addons/ucsproxy.py --set ucs_mode=record --set ucs_db=recordings/ucsproxy.db
    mitmdump -s addons/ucsproxy.py --mode reverse:http://127.0.0.1:1 \
        --set connection_strategy=lazy --set ucs_mode=mock

All the work is in the ``ucsproxy`` package; this file only hands mitmproxy the addon.
"""

import os
import sys

# mitmproxy puts this script's folder first on sys.path, where this very file
# would shadow the ``ucsproxy`` package. Import the package with that folder
# hidden, falling back to the checkout this file lives in.
_here = os.path.dirname(os.path.abspath(__file__))
_saved_path = list(sys.path)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
sys.path.append(os.path.dirname(_here))
try:
    from ucsproxy.addon import UcsProxy
finally:
    sys.path[:] = _saved_path

addons = [UcsProxy()]
