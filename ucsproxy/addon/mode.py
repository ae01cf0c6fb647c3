"""The ``ucs_mode`` option: which mode the addons serve in (record, mock, replay or off).

First in the chain, so every addon after it reads the mode from the core, and
the mock and replay addons rebuild once the mode they depend on is set.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx

from .. import options
from ..core import UcsCore


class Mode:
    name = "ucsproxy-mode"

    def __init__(self, core: UcsCore) -> None:
        self.core = core

    def load(self, loader: Any) -> None:
        options.declare(loader, "mode")

    def configure(self, updated: set[str]) -> None:
        self.core.mode = ctx.options.ucs_mode
