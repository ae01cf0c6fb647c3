"""Mock (``ucs_mode=mock``): answers EWS requests from the in-memory UCS model.

Builds the model from ``ucs_state`` / ``ucs_seed`` / ``ucs_item_list`` / ``ucs_policy`` when they
(or the mode) change; answers every request no fault settled (other paths 404,
other methods 405, unreadable or schema-breaking XML the schema fault); saves
the mailboxes to ``ucs_state`` when mitmproxy stops.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx, exceptions, http

from .. import core, options
from ..core import UcsCore
from ..flowfacts import facts_of
from .flows import answer


class Mock:
    name = "ucsproxy-mock"

    def __init__(self, core: UcsCore) -> None:
        self.core = core

    def load(self, loader: Any) -> None:
        options.declare(loader, "mock")

    def configure(self, updated: set[str]) -> None:
        if updated & {"ucs_mode", "ucs_state", "ucs_seed", "ucs_item_list", "ucs_mailbox", "ucs_policy"}:
            opts = ctx.options
            try:
                self.core.build_model(state=opts.ucs_state, seed=opts.ucs_seed, item_list=opts.ucs_item_list,
                                      mailbox=opts.ucs_mailbox, policy=opts.ucs_policy)
            except core.ConfigError as e:
                raise exceptions.OptionsError(str(e)) from e

    def request(self, flow: http.HTTPFlow) -> None:
        if self.core.mode == "mock" and not facts_of(flow).get("ucs_settled"):
            answer(self.core, flow)

    def done(self) -> None:
        self.core.save_state(ctx.options.ucs_state)
