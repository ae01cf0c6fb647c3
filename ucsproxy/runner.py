"""Run mitmproxy with the ucsproxy addons: in the foreground (the CLI) or on a
background thread (the pytest plugin). Also builds the mitmproxy option sets of
each mode, so the CLI and the plugin start exactly the same proxy.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mitmproxy.tools.dump import DumpMaster

# mitmproxy is imported where a proxy starts, not here: the lean front
# (front.py) uses the option sets below without loading mitmproxy.

# Mock and replay answer every request themselves; this address only fills
# mitmproxy's reverse-mode slot and is never contacted: connection_strategy=lazy
# opens no upstream connection before one is needed, and none is.
PLACEHOLDER_UPSTREAM = "http://127.0.0.1:9"

CONSOLE_FLUSH = 0.05  # seconds a console line may wait in stdout's buffer (the lean front's too)


def _addon_values(mode: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` by option name (``ucs_seed``, or ``seed`` for short) over the mode's defaults, from the table."""
    from .options import mode_values

    return mode_values(mode, {k if k.startswith("ucs_") else f"ucs_{k}": v for k, v in values.items()})


def mock_options(**values: Any) -> dict[str, Any]:
    """mitmproxy's options for the mock; ``values``: ucsproxy options by name, e.g. ``seed=0``, ``state="s.json"``."""
    from .options import BODY_LIMIT

    return dict(
        mode=[f"reverse:{PLACEHOLDER_UPSTREAM}"],
        connection_strategy="lazy",
        keep_host_header=True,  # Autodiscover answers name the host the client asked for
        body_size_limit=BODY_LIMIT,  # a mock reads no endless body (the lean front reads this too)
        ucs_mode="mock",
        **_addon_values("mock", values),
    )


def replay_options(source: str, *, fallthrough: str | None = None, **values: Any) -> dict[str, Any]:
    """mitmproxy's options for replaying ``source`` (forwarding misses to ``fallthrough``, a URL);
    ``values``: ucsproxy options by name, e.g. ``match="operation"``, ``stateful=True``, ``seed=0``."""
    from .options import BODY_LIMIT

    return dict(
        mode=[f"reverse:{fallthrough or PLACEHOLDER_UPSTREAM}"],
        connection_strategy="lazy",
        keep_host_header=not fallthrough,  # Autodiscover answers name the host the client asked for
        # A replay that answers everything itself reads no endless body; one that forwards its misses
        # passes every request on as it came (mitmproxy's limit would refuse those too).
        **({} if fallthrough else {"body_size_limit": BODY_LIMIT}),
        ucs_mode="replay",
        **_addon_values("replay", dict(values, replay=str(source), fallthrough=bool(fallthrough))),
    )


def record_options(upstream: str | None, *, proxy_mode: str = "reverse", insecure: bool = False) -> dict[str, Any]:
    return dict(
        mode=[f"reverse:{upstream}" if proxy_mode == "reverse" else "regular"],
        ssl_insecure=insecure,
        ucs_mode="record",
    )


def _quiet_libraries(verbose: bool) -> None:
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("tornado", "asyncio", "hpack", "quic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "reverse proxy to http://127.0.0.1:9 listening at ..." names the mock's placeholder upstream:
    # the addon's start-up line (cli/banner.py) says what listens instead.
    logging.getLogger("mitmproxy.proxy.mode_servers").setLevel(logging.WARNING)


def freeze_start_up() -> None:
    """Put what start-up made (modules, options, the log's store) out of the cyclic collector's sight.

    A recording proxy keeps all of it to the end, and mitmproxy makes garbage fast enough that
    the collector's full passes, each walking every object the process holds, cost tens of µs
    of CPU per exchange; frozen, a pass walks only what was made since. Garbage is collected first,
    so none is frozen with it. Record mode only: the mock and replay on mitmproxy keep their
    models collectable (a reset, a reload drops them). The young generation keeps Python's
    threshold: mitmproxy's flows die in reference cycles, and collecting them 10,000 objects
    at a time (the lean front's ``GC_THRESHOLDS``) took twice the CPU here.
    """
    import gc

    gc.collect()
    gc.freeze()


def run_foreground(options: dict[str, Any], *, verbose: bool = False) -> int:
    """Run until SIGINT / SIGTERM, then shut down cleanly (the log is flushed, state saved).

    Returns the number of exchanges that could not be written to the log (0 when all were).
    Raises mitmproxy's OptionsError for a bad option, before anything listens, and
    :class:`StoppedWhileStarting` when a signal arrives before the proxy serves.
    """
    # A signal during start-up (a log writer starting, a model loading) is remembered here and
    # acted on as soon as start-up is through: it must stop the proxy, never be swallowed.
    early: list[int] = []

    def remember(signum, frame) -> None:
        early.append(signum)

    from mitmproxy import options as mitm_options
    from mitmproxy.tools.dump import DumpMaster

    from .addon import UcsProxy, dispatch
    from .core import StoppedWhileStarting, UcsCore

    previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGINT, signal.SIGTERM)}
    ucs_core = UcsCore()

    async def _main() -> None:
        opts = mitm_options.Options()
        master = DumpMaster(opts, with_termlog=True, with_dumper=verbose)
        dispatch.install(master)  # events only to the addons that have a hook for them
        master.addons.add(UcsProxy(ucs_core))  # one addon in the chain: see UcsProxy
        try:
            opts.update(**options)
        finally:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, master.shutdown)
        if hasattr(signal, "SIGPIPE"):
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        if options.get("ucs_mode") == "record":
            freeze_start_up()
        # Console lines are flushed at most every CONSOLE_FLUSH seconds (as the lean front's), not
        # with a system call per exchange; the summary at the end flushes what is left.
        loop = asyncio.get_running_loop()
        ucs_core.reporter.console.flush_soon = lambda flush: loop.call_later(CONSOLE_FLUSH, flush)
        if early:
            await master.done()  # closes the log (nothing was served) and saves nothing new
            raise StoppedWhileStarting(early[0])
        # From here a signal calls master.shutdown(), which run() honours also before it serves.
        await master.run()
        if ucs_core.store is not None:  # stopped before it served: run() skipped the done hook
            await master.done()

    _quiet_libraries(verbose)
    try:
        asyncio.run(_main())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return ucs_core.unwritten


class BackgroundProxy:
    """mitmproxy + the ucsproxy addons on a daemon thread with its own event loop.

    ``url`` is where it listens (a free port is picked when ``listen_port`` is 0),
    ``core`` the live :class:`~ucsproxy.core.UcsCore` (its ``model`` is the mock's state).
    ``log_writer``: "process" writes the log in a writer process, as ``ucsproxy`` does; "thread"
    writes it on a thread of this process, as :class:`~ucsproxy.front.BackgroundLean` does (no
    process to start: what a program embedding a short-lived proxy, a test, wants).
    """

    def __init__(self, options: dict[str, Any], listen_host: str = "127.0.0.1", listen_port: int = 0,
                 startup_timeout: float = 30.0, log_writer: str = "process"):
        from .addon import UcsProxy
        from .core import UcsCore

        self.core = UcsCore()
        self.core.log_writer = log_writer
        self.addon = UcsProxy(self.core)
        self._options = dict(options, listen_host=listen_host, listen_port=listen_port)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._master: DumpMaster | None = None
        self.address: tuple[str, int] | None = None
        self._thread = threading.Thread(target=self._run, name="ucsproxy", daemon=True)
        self._thread.start()
        # A start that fails leaves nothing behind: no thread, no server, no log writer.
        if not self._ready.wait(startup_timeout):
            self.stop()
            raise TimeoutError("ucsproxy did not start listening in time")
        if self._error is not None:
            self._thread.join(startup_timeout)
            raise self._error

    @property
    def url(self) -> str:
        assert self.address is not None
        return f"http://{self.address[0]}:{self.address[1]}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as e:  # surfaced to the starting thread
            self._error = e
            try:
                # A log opened before the failure has a writer waiting for its end of the pipe.
                self.core.close_store()
            except Exception:
                pass
            self._ready.set()
        finally:
            # Connections still open when the proxy stops: let their handlers end quietly.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _main(self) -> None:
        from mitmproxy import options as mitm_options
        from mitmproxy.tools.dump import DumpMaster

        from .addon import dispatch

        opts = mitm_options.Options()
        master = DumpMaster(opts, with_termlog=False, with_dumper=False)
        dispatch.install(master)  # events only to the addons that have a hook for them
        master.addons.add(self.addon)
        opts.update(**self._options)
        self._master = master
        running = asyncio.ensure_future(master.run())
        proxyserver = master.addons.get("proxyserver")
        while not running.done():
            addrs = proxyserver.listen_addrs()
            if addrs:
                self.address = (addrs[0][0], addrs[0][1])
                self._ready.set()
                break
            await asyncio.sleep(0.01)
        await running

    def stop(self, timeout: float = 15.0) -> None:
        if self._loop is not None and self._master is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._master.shutdown)
        self._thread.join(timeout)
