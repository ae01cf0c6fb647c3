"""The ``ucsproxy`` command line: a thin layer over the package's modules.

Each submodule adds its commands to :data:`main`:
``serve`` (mock, record, replay), ``logs`` (log, show), ``state``, ``recordingfiles`` (export, import), ``report`` and
``faultrules`` (faults check).
"""

from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ucsproxy")
def main() -> None:
    """Decode, log, mock, replay and fault-inject Exchange Unified Contact Store traffic."""


from . import faultrules, logs, recordingfiles, report, serve, state, validate  # noqa: E402,F401  (register commands)
