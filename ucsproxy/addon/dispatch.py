"""Events handed only to the addons that have a hook for them, in ucsproxy's own mitmproxy processes.

mitmproxy's addon manager hands every event to every addon of its chain: per addon a
``safecall`` context manager, an ``invoke_addon`` coroutine awaited, and a generator
walking the addon and its nested addons, whether the addon has a hook for the event or
not. An HTTP flow is eight events (``requestheaders``, ``request``, ``responseheaders``,
``response``, each followed by ``update``) and the default chain of mitmdump is over forty
addons, most with none of those hooks: about 400 µs of a proxy's 1.3 ms of CPU per
exchange on this project's machine went to calling nothing.

:func:`install` gives a master's addon manager a ``trigger_event`` that passes over an
addon when mitmproxy's own would call nothing on it (no attribute of the event's name and
no nested addons) and hands every other addon the event exactly as mitmproxy does (its
``safecall`` and ``invoke_addon``: the same order, awaiting, error logging, ``AddonHalt``).
Installed by the runner (``ucsproxy record``, ``replay --fallthrough``, ``--front
mitmproxy``, the pytest plugin's mitmproxy endpoint); ``mitmdump -s addons/ucsproxy.py``
keeps mitmproxy's manager. Installed only where the manager is the one this was written
against (mitmproxy 11 and 12 have the same): otherwise mitmproxy's stays.
"""

from __future__ import annotations

import types
from typing import Any

from mitmproxy import addonmanager, exceptions, hooks


async def trigger_event(self: addonmanager.AddonManager, event: hooks.Hook) -> None:
    """``AddonManager.trigger_event`` without the calls that would call nothing."""
    name = event.name
    for addon in self.chain:
        if getattr(addon, name, None) is None and not hasattr(addon, "addons"):
            continue  # invoke_addon would find no hook on it nor anything under it
        try:
            with addonmanager.safecall():
                await self.invoke_addon(addon, event)
        except exceptions.AddonHalt:
            return


def _known(manager: Any) -> bool:
    """Whether the manager is the one this was written against (its event loop as in mitmproxy 11 and 12)."""
    cls = type(manager)
    return (cls is addonmanager.AddonManager and isinstance(getattr(manager, "chain", None), list)
            and callable(getattr(cls, "invoke_addon", None)) and callable(getattr(addonmanager, "safecall", None))
            and callable(getattr(cls, "trigger_event", None)))


def install(master: Any) -> bool:
    """Give ``master``'s addon manager the event loop above; False (and nothing changed) for a
    manager this does not know."""
    manager = master.addons
    if not _known(manager):
        return False
    manager.trigger_event = types.MethodType(trigger_event, manager)
    return True
