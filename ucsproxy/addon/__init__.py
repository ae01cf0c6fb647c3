"""The mitmproxy glue: one small addon per concern over one shared :class:`~ucsproxy.core.UcsCore`.

:func:`default_addons` composes them in a list, in this order (mitmproxy calls
each hook on each addon in list order, awaiting one before the next):

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
order says, and its options as rows of the options table naming it. :class:`UcsProxy` holds the list as mitmproxy nested
addons (the ``addons`` attribute) for the callers and tests that want one handle.
"""

from __future__ import annotations

from typing import Any, TypeVar

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


def default_addons(ucs_core: UcsCore | None = None) -> list[Any]:
    """ucsproxy's addons in their order, sharing ``ucs_core`` (a new one when not given)."""
    c = ucs_core or UcsCore()
    return [Mode(c), Control(c), Routes(c), Decode(c), Faults(c), Mock(c), Replay(c), View(c), Log(c)]


class UcsProxy:
    """All of ucsproxy's addons under one name: mitmproxy registers :attr:`addons` as nested addons.

    ``core`` is the shared :class:`~ucsproxy.core.UcsCore`; ``model``, ``store`` and the
    rest are the core's, under the names the single addon once had.
    """

    name = "ucsproxy"

    def __init__(self, ucs_core: UcsCore | None = None) -> None:
        self.core = ucs_core or UcsCore()
        self.addons = default_addons(self.core)

    mode = property(lambda self: self.core.mode)
    store = property(lambda self: self.core.store)
    model = property(lambda self: self.core.model)
    service = property(lambda self: self.core.service)
    replay = property(lambda self: self.core.replay)
    engine = property(lambda self: self.core.engine)
    watcher = property(lambda self: self.core.watcher)

    def part(self, kind: type[T]) -> T:
        """The addon of this kind in the list, e.g. ``proxy.part(Faults).faults_list()``."""
        return next(a for a in self.addons if isinstance(a, kind))
