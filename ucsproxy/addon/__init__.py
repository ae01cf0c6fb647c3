"""The mitmproxy glue: one small addon per concern over one shared :class:`~ucsproxy.core.UcsCore`.

:func:`default_addons` composes them in a list, in this order (each hook is called on each
addon in list order, awaiting one before the next):

=============  ===============================================  =====================================
addon          its job                                          its options
=============  ===============================================  =====================================
``Mode``       which mode serves: record, mock, replay, off     ``ucs_mode``
``Control``    the /_ucsproxy/ control API; settles its calls   ``ucs_control``, ``ucs_control_token``
``Routes``     Autodiscover answers; no body in HEAD answers    ``ucs_domains``
``Decode``     the decoded EWS request onto the flow            ``ucs_lenient``
``Faults``     fault decisions; render, reset, hold, alter      ``ucs_faults``, ``ucs_fault``, ...
``Mock``       answers from the in-memory model                 ``ucs_state``, ``ucs_seed``, ...
``Replay``     answers from a recording (``flow.is_replay``)    ``ucs_replay``, ``ucs_match``, ...
``View``       console line, flow marks, content view, banner   ``ucs_console``, ``ucs_marks``, ...
``Log``        the SQLite log; opens last                       ``ucs_db``, ``ucs_keep_secrets``, ...
=============  ===============================================  =====================================

The order carries the rules: the mode is set before the mock and replay
rebuild; a control API call is answered before anything else and never logged; the request is decoded before faults select on it; a fault decides
before the mock changes a mailbox, and a terminal one settles the flow so no
later addon answers it; faults alter the answer before the log sees it; the
log opens only after every other option was accepted. Each addon declares its
own options (rows of :mod:`ucsproxy.options`, the one table of options) in
``load`` and checks them in ``configure``, raising mitmproxy's OptionsError with
a sentence. An addon may read an option an earlier addon declares (replay reads
``ucs_seed``), never a later one.

Addons hand each other per-flow facts through :func:`ucsproxy.flowfacts.scratch`
(:mod:`ucsproxy.addon.flows` lists its keys). A new concern is one more class
taking the core, with its hooks, inserted in :func:`default_addons` where its
order says, and its options as rows of the options table naming it. :class:`UcsProxy` is the list
as one mitmproxy addon, which is how the CLI, the pytest plugin and ``addons/ucsproxy.py`` run
it: it calls the parts' hooks itself, at a fraction of what mitmproxy's chain costs per addon.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mitmproxy import exceptions, http

from ..core import UcsCore
from .control import Control
from .decode import Decode
from .faults import Faults
from .log import Log
from .mock import Mock
from .mode import Mode
from .replay import Replay
from .routes import Routes
from .view import View

__all__ = ["Control", "Decode", "Faults", "Log", "Mock", "Mode", "Replay", "Routes", "UcsProxy", "View", "default_addons"]


T = TypeVar("T")

# A part's failure is logged where mitmproxy logs a failing addon's.
_mitm_log = logging.getLogger("mitmproxy.addonmanager")


def default_addons(ucs_core: UcsCore | None = None) -> list[Any]:
    """ucsproxy's addons in their order, sharing ``ucs_core`` (a new one when not given)."""
    c = ucs_core or UcsCore()
    return [Mode(c), Control(c), Routes(c), Decode(c), Faults(c), Mock(c), Replay(c), View(c), Log(c)]


class UcsProxy:
    """All of ucsproxy's addons as one addon in mitmproxy's chain; its :attr:`parts` are the
    list :func:`default_addons` makes, called in their order.

    mitmproxy hands every event to every addon of its chain (eight events per HTTP flow:
    ``requestheaders``, ``request``, ``responseheaders``, ``response``, each followed by
    ``update``), and each addon costs it a context manager, a coroutine and a generator per
    event whether the addon has that hook or not: nine addons in the chain cost a recording
    proxy about a tenth of its CPU per exchange. This addon takes one place in the chain and
    calls its parts' hooks itself, as mitmproxy would: an awaitable a part returns is awaited
    before the next part runs (a hook stays synchronous when every part's was), and a part
    that raises is logged as mitmproxy logs a failing addon, and the parts after it still run.
    The parts' commands (``ucs.faults.*``) are registered as the parts' own.

    ``core`` is the shared :class:`~ucsproxy.core.UcsCore`; ``model``, ``store`` and the
    rest are the core's, under the names the single addon once had.
    """

    name = "ucsproxy"

    def __init__(self, ucs_core: UcsCore | None = None) -> None:
        self.core = ucs_core or UcsCore()
        # Not named ``addons``: mitmproxy would then hand each part every event itself.
        self.parts = default_addons(self.core)
        self._request = _hooks(self.parts, "request")
        self._response = _hooks(self.parts, "response")
        self._error = _hooks(self.parts, "error")

    mode = property(lambda self: self.core.mode)
    store = property(lambda self: self.core.store)
    model = property(lambda self: self.core.model)
    service = property(lambda self: self.core.service)
    replay = property(lambda self: self.core.replay)
    engine = property(lambda self: self.core.engine)
    watcher = property(lambda self: self.core.watcher)

    def part(self, kind: type[T]) -> T:
        """The addon of this kind in the list, e.g. ``proxy.part(Faults).faults_list()``."""
        return next(a for a in self.parts if isinstance(a, kind))

    # -- mitmproxy's hooks ----------------------------------------------------

    def load(self, loader: Any) -> None:
        for hook in _hooks(self.parts, "load"):
            _call(hook, loader)
        for part in self.parts:
            loader.master.commands.collect_commands(part)

    def configure(self, updated: set[str]) -> None:
        for hook in _hooks(self.parts, "configure"):
            _call(hook, updated)

    def running(self) -> None:
        for hook in _hooks(self.parts, "running"):
            _call(hook)

    def done(self) -> None:
        for hook in _hooks(self.parts, "done"):
            _call(hook)

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return _run(self._request, flow)

    def response(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return _run(self._response, flow)

    def error(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        return _run(self._error, flow)


def _hooks(parts: list[Any], name: str) -> tuple[Callable[..., Any], ...]:
    return tuple(getattr(p, name) for p in parts if callable(getattr(p, name, None)))


def _call(hook: Callable[..., Any], *args: Any) -> Any:
    """``hook(*args)`` as mitmproxy calls an addon's (``addonmanager.safecall``): options errors and
    halts go to mitmproxy, anything else is logged (with its traceback) and the chain goes on."""
    try:
        return hook(*args)
    except (exceptions.AddonHalt, exceptions.OptionsError):
        raise
    except Exception as e:
        _mitm_log.error(f"Addon error: {e}", exc_info=True)
        return None


def _run(hooks: tuple[Callable[..., Any], ...], flow: http.HTTPFlow) -> Awaitable[None] | None:
    """The parts' hooks on ``flow`` in order (as :func:`_call` would call each, written out: this is
    the per-flow path); from the first that returns an awaitable on, a coroutine."""
    for i, hook in enumerate(hooks):
        try:
            result = hook(flow)
        except (exceptions.AddonHalt, exceptions.OptionsError):
            raise
        except Exception as e:
            _mitm_log.error(f"Addon error: {e}", exc_info=True)
            continue
        if result is not None and inspect.isawaitable(result):
            return _finish(result, hooks[i + 1:], flow)
    return None


async def _finish(pending: Awaitable[Any], hooks: tuple[Callable[..., Any], ...], flow: http.HTTPFlow) -> None:
    await _awaited(pending)
    for hook in hooks:
        result = _call(hook, flow)
        if result is not None and inspect.isawaitable(result):
            await _awaited(result)


async def _awaited(pending: Awaitable[Any]) -> None:
    """``await pending`` as :func:`_call` calls a hook: halts and options errors go to mitmproxy,
    anything else is logged and the chain goes on."""
    try:
        await pending
    except (exceptions.AddonHalt, exceptions.OptionsError):
        raise
    except Exception as e:
        _mitm_log.error(f"Addon error: {e}", exc_info=True)
