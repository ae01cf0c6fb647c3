"""Replay (``ucs_mode=replay``): answers from a recording, literally or from a model built from it.

Reads ``ucs_replay`` with ``ucs_match`` (or as live mailboxes with
``ucs_stateful``); a request without a recorded answer gets replay's no-match
answer, or goes to the upstream with ``ucs_fallthrough`` (and what the upstream
answered is appended to the fixture directory ``ucs_append`` names). A replayed answer is
marked as mitmproxy marks its own (``flow.is_replay == "response"``, ``~replays``).
Reads ``ucs_seed`` (the mock addon's) for the ids a stateful replay makes.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx, exceptions, http

from .. import core, options
from ..core import UcsCore
from ..flowfacts import facts_of, scratch
from .flows import answer


class Replay:
    name = "ucsproxy-replay"

    def __init__(self, core: UcsCore) -> None:
        self.core = core

    def load(self, loader: Any) -> None:
        options.declare(loader, "replay")

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        self.core.fallthrough = opts.ucs_fallthrough
        if updated & {"ucs_mode", "ucs_replay", "ucs_match", "ucs_stateful", "ucs_seed"}:
            try:
                self.core.build_replay(opts.ucs_replay, match=opts.ucs_match, stateful=opts.ucs_stateful,
                                       seed=opts.ucs_seed)
            except core.ConfigError as e:
                raise exceptions.OptionsError(str(e)) from e
        if updated & {"ucs_mode", "ucs_append", "ucs_fallthrough"}:
            try:
                self.core.build_append(opts.ucs_append)  # replay --fallthrough URL --append DIR
            except core.ConfigError as e:
                raise exceptions.OptionsError(str(e)) from e

    def request(self, flow: http.HTTPFlow) -> None:
        c = self.core
        if c.mode != "replay" or facts_of(flow).get("ucs_settled"):
            return
        sent = answer(c, flow)
        if (note := c.replay_note(sent)) is not None:
            scratch(flow)["ucs_replay"] = note
            if note[0] == "replayed":
                flow.is_replay = "response"  # as mitmproxy's server replay marks its answers (~replays)
