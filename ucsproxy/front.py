"""The lean front: an asyncio HTTP/1.1 server on the shared core, for ``mock`` and ``replay``.

A mock is not a proxy: when nothing is forwarded, mitmproxy's per-flow machinery
is cost without purpose. This front parses requests with httptools (llhttp, the
parser of Node.js), hands them to :class:`~ucsproxy.core.UcsCore` (the same
decoding, model, replay matching, fault decisions and log as the mitmproxy
addon) and writes the answers itself. It keeps connections alive, answers
pipelined requests in order, reads chunked bodies, answers ``Expect:
100-continue``, sends no body to HEAD, and speaks TLS on the same port with a
certificate from mitmproxy's CA (the first byte of a connection tells TLS from
plain HTTP). HTTP/2 stays on the mitmproxy front.

Because this front owns the socket, the transport faults are its own: ``reset``
sends a TCP reset, ``timeout`` holds the connection and then closes it,
``truncate`` with ``keep_length`` promises more bytes than it sends and hangs up,
and link shaping (bandwidth, latency, slow-body, slicer, slow-close) writes an
answer in the pieces and at the times :class:`~ucsproxy.faults.LinkPlan` says.

Nothing here imports mitmproxy.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import struct
import threading
import time
from collections import deque
from http import HTTPStatus
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httptools

from . import core as core_mod
from . import options as options_mod
from .control import is_control_path
from .core import Answer, UcsCore
from .faults import FaultDecision, Kind
from .logrow import RawExchange
from .memo import keep

if TYPE_CHECKING:
    import ssl

    from .tlscerts import TlsCertificates

log = logging.getLogger("ucsproxy")

KILLED = "Connection killed."  # the error mitmproxy logs for a flow a fault killed; the log reads the same
CLIENT_GONE = "Client disconnected."
STOPPED = core_mod.STOPPED
#: A pipelined request read but never answered: the connection closed before its turn came.
NOT_ANSWERED = "Not answered: the connection closed before this pipelined request's turn."
TLS_HANDSHAKE = 0x16
MAX_PIPELINED = 64  # queued requests per connection before it stops reading
#: Bytes of a request's target and header fields at most. http.sys allows 16 KB by default and
#: sites raise it for big Kerberos tickets in Authorization; past this the answer is 431 and the
#: connection closes, rather than a head that never ends growing in memory.
HEAD_MAX = 64 * 1024
_HEAD_TOO_LARGE = b"ucsproxy: the request's head is larger than %d bytes.\n" % HEAD_MAX
CONSOLE_FLUSH = 0.05  # seconds a console line may wait in stdout's buffer
BIG_ANSWER = 64 * 1024  # answers at least this long are written without joining them to their head
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# (status, *header pairs) -> (status line and header lines, the pairs sent): see _Connection._frame.
_HEADS: dict[tuple, tuple[bytes, tuple[tuple[str, str], ...], dict[tuple[int, bool, bool], tuple[bytes, tuple]]]] = {}
_HEADS_MAX = 256
_ENDS_MAX = 256  # whole heads kept per set of headers (by length and ending)
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _wire(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class _Request:
    __slots__ = ("method", "url", "headers", "body", "keep_alive", "started", "expect_continue", "http10", "mailbox",
                 "head", "fed", "chunk_at", "size")

    def __init__(self, started: float):
        self.method = ""
        self.url: list[bytes] = []
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.keep_alive = True
        self.started = started
        self.expect_continue = False
        self.http10 = False
        self.mailbox: str | None = None  # whose mailbox the model answers from (found once, logged too)
        self.head = 0  # bytes of the target and header fields so far (HEAD_MAX)
        self.fed = 0  # bytes read while its head was incomplete, after the read it began in (HEAD_MAX)
        self.chunk_at = -1  # body pieces before its last chunk header (a chunked body's trailer fields)
        self.size = 0  # bytes of its body so far (the server's body_limit)


class _Connection(asyncio.Protocol):
    """One client connection: parse, answer in order, log."""

    def __init__(self, server: LeanServer):
        self.server = server
        self.core = server.core
        self.transport: asyncio.Transport | None = None
        self.client: str | None = None
        self.scheme = "http"
        self.listen = "localhost"
        self.parser = httptools.HttpRequestParser(self)
        self.current: _Request | None = None
        self.pending: deque[_Request] = deque()
        self.task: asyncio.Task | None = None  # the request whose answer waits on a fault
        self.closing = False
        self.paused = False
        self.upgrading: tuple[_Request, int] | None = None  # (request, body bytes still to read)
        self.head_too_large = False
        self.body_too_large = False
        #: A refusal (body, status, its log row) waiting for the pipelined answers before it (_refuse).
        self.refusal: tuple[bytes, int, Callable[[bool], None] | None] | None = None
        self.body_limit = server.body_limit

    # -- transport events --------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.client = f"{peer[0]}:{peer[1]}"
        self.scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
        local = transport.get_extra_info("sockname")
        # The address the client connected to: Autodiscover's URLs use it when a request has no Host.
        self.listen = f"{_url_host(str(local[0]))}:{local[1]}" if local else "localhost"
        self.server.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if self.task is not None:
            self.task.cancel()  # its row, then the requests queued behind it (_fault_done)
        else:
            self._unanswered()

    def data_received(self, data: bytes) -> None:
        if self.refusal is not None:
            return  # nothing after a refused request is read (reading is paused; a read in flight)
        while data:
            if self.upgrading is not None:
                data = self._upgrade_body(data)
                continue
            before = self.current
            pieces = len(before.body) if before is not None else 0
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as e:
                # An Upgrade offer (curl's h2c): llhttp stops after the headers. No 101 is sent, so
                # the client goes on in HTTP/1.1: read the body by its length, answer, parse on.
                data = data[e.args[0]:] if e.args and isinstance(e.args[0], int) else b""
                self.parser = httptools.HttpRequestParser(self)
                continue
            except httptools.HttpParserError:
                if self.head_too_large:
                    self._refuse_head()
                elif self.body_too_large:
                    self._refuse_body()
                else:
                    self._refuse(b"ucsproxy: malformed HTTP request.\n", 400)
                return
            # httptools holds a header line whole until its end, before any callback sees it: a line
            # that never ends is bounded here, by the bytes read while the same request's head is
            # still incomplete (the read a request began in is not counted: one read is bounded).
            # A chunked body's trailer fields are held alike: after the last chunk header, reads
            # that bring no body are counted too.
            req = self.current
            if req is not None and req is before and (
                    not req.method or (req.chunk_at == len(req.body) == pieces)):
                req.fed += len(data)
                if req.fed > HEAD_MAX:
                    self.head_too_large = True
                    self._refuse_head()
            return

    def _upgrade_body(self, data: bytes) -> bytes:
        assert self.upgrading is not None  # data_received calls this only while upgrading
        req, missing = self.upgrading
        take = data[:missing]
        req.body.append(take)
        missing -= len(take)
        if missing:
            self.upgrading = (req, missing)
        else:
            self.upgrading = None
            self._dispatch(req)
        return data[len(take):]

    def _refuse_body(self) -> None:
        """413 and a closed connection for a request whose body is past the body limit, which the
        log is told (the body is not kept), as mitmproxy's front logs its body_size_limit."""
        req = self.current
        limit = self.server.body_limit
        text = b"ucsproxy: the request's body is larger than %d bytes (--body-limit).\n" % limit
        row = None
        if req is not None and req.method:
            row = self._refusal_row(req, 413, text, f"Request body exceeds ucsproxy's body limit of {limit} bytes "
                                    f"(--body-limit)", f"the {req.size} bytes read were not kept.")
        self._refuse(text, 413, row)

    def _refuse_head(self) -> None:
        """431 and a closed connection for a request whose head is past HEAD_MAX, with a row in the
        log as a refused body has (what was read of the target is kept, the header fields are not)."""
        req = self.current
        row = None
        if req is not None:
            if not req.method:
                try:
                    req.method = self.parser.get_method().decode("ascii", "replace")
                except httptools.HttpParserError:
                    pass  # not even the method was read
            row = self._refusal_row(req, 431, _HEAD_TOO_LARGE, f"Request head exceeds ucsproxy's limit of {HEAD_MAX} "
                                    "bytes", "the head was not read to its end.")
        self._refuse(_HEAD_TOO_LARGE, 431, row)

    def _refusal_row(self, req: _Request, status: int, text: bytes, why: str, after: str) -> Callable[[bool], None]:
        """What logs a refused request once its turn comes (``answered``: the refusal was written):
        ``why``, what was done, ``after``; what was read of the target is kept, the body is not."""

        def row(answered: bool) -> None:
            self._log(req, _text(b"".join(req.url)), None, None,
                      (status, _refusal_headers(text), text) if answered else None, None,
                      f"{why}: {f'answered {status} and ' if answered else ''}closed the connection; {after}")
        return row

    def _can_answer(self) -> bool:
        """Whether an answer written now is the next one the client reads (none before it is pending)."""
        return self.task is None and not self.pending and not self.closing

    def _refuse(self, body: bytes, status: int, row: Callable[[bool], None] | None = None) -> None:
        """Answer ``status`` with ``body`` and close the connection; ``row(answered)`` logs the
        refused request. Requests read before it (pipelined behind an answer a fault holds) are
        answered first, in order, as mitmproxy's front answers them: nothing more is read, and the
        refusal waits for its turn (:meth:`_drain`)."""
        self.current = None  # the parser stops at this request: no 100 Continue for it
        if self._can_answer() or self.closing:
            self._refused(body, status, row)
            return
        self.refusal = (body, status, row)
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _refused(self, body: bytes, status: int, row: Callable[[bool], None] | None) -> None:
        answered = not self.closing
        if row is not None:
            row(answered)
            if self.server.logged:
                self.server.flush()  # logged before the answer is written, as every exchange
        if answered:
            self._write(_status_line(status) + b"".join(b"%s: %s\r\n" % (_wire(k), _wire(v))
                                                        for k, v in _refusal_headers(body)) + b"\r\n" + body)
        self.close()

    def _unanswered(self) -> None:
        """Log the requests this connection read and will not answer (it closed before their turn)."""
        while self.pending:
            req = self.pending.popleft()
            url, pieces = req.url, req.body
            self._log(req, _text(b"".join(url)), b"".join(pieces), None, None, None,
                      STOPPED if self.server.stopping else NOT_ANSWERED)
        if self.refusal is not None:
            body, status, row = self.refusal
            self.refusal = None
            if row is not None:
                row(False)

    def close(self) -> None:
        if self.server.outbox:
            self.server.flush()  # the answers before it go first
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def reset(self) -> None:
        """Hang up with a TCP reset (RST), not an orderly close."""
        if self.server.outbox:
            self.server.flush()
        self.closing = True
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, AttributeError):
            pass
        self.transport.abort()

    async def hold(self, ms: float) -> None:
        """Keep the connection silent for ``ms`` (or until the rules change or ucsproxy stops)."""
        await self.core.hold(ms)

    def _write(self, data: bytes) -> None:
        if self.server.outbox:
            self.server.flush()  # in order: the answers waiting for the end of the loop turn first
        if not self.closing and self.transport is not None:
            self.transport.write(data)

    # -- parser callbacks (httptools) --------------------------------------

    def on_message_begin(self) -> None:
        self.current = _Request(time.time())

    # Each callback reads self.current itself (one call per header, not three): httptools calls
    # them for every request's target, header fields and body.

    def _too_large(self) -> None:
        self.head_too_large = True
        raise ValueError("request head too large")  # httptools stops and raises HttpParserError

    def on_url(self, url: bytes) -> None:
        req = self.current
        assert req is not None  # httptools calls on_message_begin before any other callback
        req.head += len(url)
        if req.head > HEAD_MAX:
            self._too_large()
        req.url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.current
        assert req is not None
        req.head += len(name) + len(value)
        if req.head > HEAD_MAX:
            self._too_large()
        req.headers.append((name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")))
        if len(name) == 6 and name.lower() == b"expect" and value.strip().lower() == b"100-continue":
            req.expect_continue = True

    def on_headers_complete(self) -> None:
        req = self.current
        assert req is not None
        req.method = self.parser.get_method().decode("ascii", "replace")
        if req.expect_continue and _declared_length(req) > self.body_limit:
            self.body_too_large = True  # 413 instead of 100 Continue: the client need not send it
            raise ValueError("request body too large")
        if req.expect_continue and self.task is None and not self.pending:
            self._write(_CONTINUE)
            req.expect_continue = False

    def on_chunk_header(self) -> None:
        req = self.current
        assert req is not None  # httptools calls on_message_begin before any other callback
        req.chunk_at = len(req.body)

    def on_body(self, body: bytes) -> None:
        req = self.current
        assert req is not None
        req.body.append(body)
        req.size += len(body)
        if req.size > self.body_limit:
            self.body_too_large = True
            raise ValueError("request body too large")  # httptools stops and raises HttpParserError

    def on_message_complete(self) -> None:
        req = self.current
        assert req is not None
        self.current = None
        req.keep_alive = self.parser.should_keep_alive()
        req.http10 = self.parser.get_http_version() == "1.0"
        if self.parser.should_upgrade():
            length = next((v for k, v in req.headers if k.lower() == "content-length"), "0")
            try:
                missing = int(length)
            except ValueError:
                missing = -1
            if missing < 0 or any(k.lower() == "transfer-encoding" for k, _ in req.headers):
                self._refuse(b"ucsproxy: an Upgrade request needs a Content-Length body.\n", 400)
                return
            if missing > self.body_limit:
                self.current = req
                self._refuse_body()
                return
            if missing:
                self.upgrading = (req, missing)
                return
        self._dispatch(req)

    def _dispatch(self, req: _Request) -> None:
        if self.task is not None or self.pending:
            self.pending.append(req)
            if len(self.pending) >= MAX_PIPELINED and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
            return
        self._serve(req)

    # -- serving -----------------------------------------------------------

    def _serve(self, req: _Request) -> None:
        try:
            self._serve_now(req)
        except Exception as e:  # a bug must not take the server down: this client gets a 500
            log.exception(f"ucsproxy: could not answer {req.method} {_text(b''.join(req.url))}: {e}")
            # This request is at the head of the line (those pending come after it): its answer is next.
            self._refused(b"ucsproxy: internal error, see the ucsproxy output.\n", 500, None)

    def _serve_now(self, req: _Request) -> None:
        """Answer one request: at once on the common path, on a task when a fault has to wait."""
        c = self.core
        url = req.url
        path = (url[0] if len(url) == 1 else b"".join(url)).decode("utf-8", "surrogateescape")
        pieces = req.body
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        kind = _PATHS.get(path)
        if kind is None:
            kind = _path_kind(path)
        if kind is _CONTROL:  # the control API: answered here, never logged
            if self.server.logged:
                self.server.flush()  # what it reports includes every exchange answered before it
            self._send(req, path, body, None, c.control_answer(req.method, path, req.headers, body, self.client),
                       logged=False)
            return
        if kind is _AUTODISCOVER:
            found = c.answer_autodiscover(req.method, path, req.headers, body, self.scheme, self.listen)
            assert found is not None  # an Autodiscover path
            self._send(req, path, body, None, found)
            return
        if kind is _EWS and c.wants_decoded(req.method, path):
            decoded, req.mailbox = c.decode_and_mailbox(body, req.headers)  # the mailbox where a model answers
        else:
            decoded = None
        if c.engine is not None or c.watcher is not None:
            decision = c.decide(decoded, req.headers)
            if decision is not None:
                self.task = asyncio.ensure_future(self._serve_with_fault(req, path, body, decoded, decision))
                self.task.add_done_callback(self._fault_done)
                return
        answer = c.answer(req.method, path, req.headers, decoded, req.mailbox)
        assert answer is not None  # only a fall-through answers None, and it runs on the mitmproxy front
        self._send(req, path, body, decoded, answer)

    async def _serve_with_fault(self, req: _Request, path: str, body: bytes, decoded,
                                decision: FaultDecision) -> None:
        c = self.core
        spec = decision.spec
        logged = False
        try:
            hold = decision.request_delay_ms
            if decision.link:
                took = (time.time() - req.started) * 1000
                hold += decision.link.hold_request_ms(_request_size(req, path, body), took)
            if hold:
                await asyncio.sleep(hold / 1000)
            if spec is not None and spec.on_connection is not None:
                await spec.on_connection(self, decision.args())
                logged = True
                self._log(req, path, body, decoded, None, decision, KILLED)
                return
            answer: Answer | None
            if spec is not None and spec.kind is Kind.ANSWER:
                answer = core_mod.rendered_answer(decision, core_mod.operation_named(decoded))
            else:
                answer = c.answer(req.method, path, req.headers, decoded, req.mailbox)
            assert answer is not None, "the lean front never falls through to an upstream"
            if decision.response_delay_ms:
                await asyncio.sleep(decision.response_delay_ms / 1000)
            if not decision.link:
                logged = self._send(req, path, body, decoded, answer, decision)
            else:
                logged = await self._send_shaped(req, path, body, decoded, answer, decision)
        except BaseException as e:
            if not logged:
                self._log(req, path, body, decoded, None, decision, self._cut_short(e))
            raise
        if not logged:  # the connection was closing when the answer was due
            self._log(req, path, body, decoded, None, decision, self._cut_short(None))

    def _cut_short(self, e: BaseException | None) -> str:
        """The log's error for an exchange a fault held back that was never answered."""
        if self.server.stopping:
            return STOPPED  # stop() cancelled it
        if e is None or isinstance(e, asyncio.CancelledError):
            return CLIENT_GONE  # connection_lost cancelled it
        return f"ucsproxy could not apply the fault: {e!r}"

    def _fault_done(self, task: asyncio.Task) -> None:
        self.task = None
        if not task.cancelled() and task.exception() is not None:
            log.error(f"ucsproxy: a fault could not be applied: {task.exception()!r}")
            self.close()
        self._drain()

    def _drain(self) -> None:
        while self.pending and self.task is None and not self.closing:
            self._serve(self.pending.popleft())
        if self.task is not None:
            return
        if self.closing:
            self._unanswered()  # nothing more is answered on this connection
            return
        if self.refusal is not None and not self.pending:
            refusal, self.refusal = self.refusal, None
            self._refused(*refusal)  # its turn has come
            return
        if self.paused and len(self.pending) < MAX_PIPELINED // 2 and self.refusal is None \
                and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        req = self.current
        if req is not None and req.expect_continue and self.task is None and not self.pending:
            self._write(_CONTINUE)  # the request now at the head of the line may send its body
            req.expect_continue = False

    def _send(self, req: _Request, path: str, body: bytes, decoded, answer: Answer,
              decision: FaultDecision | None = None, logged: bool = True) -> bool:
        """Log the answer (unless ``logged`` is false) and queue it for the end of the loop turn;
        False when the connection is closing and nothing was sent or logged."""
        if self.closing or self.transport is None:
            return False
        head, content, close, sent_headers = self._frame(req, answer, decision)
        if logged:
            # Logged before it is written: a client never holds an answer the log could miss
            # (the log writer has the exchange even if this process is killed the next instant),
            # and duration_ms is the time to the answer, not to after its write.
            self._log(req, path, body, decoded, (answer.status, sent_headers, content), decision, None, answer)
        # Written at the end of this loop turn, right after the turn's exchanges are handed to
        # the log in one go (LeanServer.flush): one frame and one system call for many answers.
        server = self.server
        server.outbox.append((self, head, content, close))
        if close:
            self.closing = True  # nothing more is answered; the flush closes the connection
        server.later()
        return True

    async def _send_shaped(self, req: _Request, path: str, body: bytes, decoded, answer: Answer,
                           decision: FaultDecision) -> bool:
        """Write the answer in the pieces the decision's link shaping makes, each after its pause,
        handing it to the log before the piece that completes it (log before write, as _send), then
        (slow-close) keep the connection open before closing it. True once logged."""
        if self.closing:
            return False
        plan = decision.link
        head, content, close, sent_headers = self._frame(req, answer, decision)
        if self.server.outbox:
            self.server.flush()  # the answers before it go first
        pieces = plan.pieces(head, content)
        for n, piece in enumerate(pieces, 1 - len(pieces)):  # n == 0: the last piece
            if piece.wait_ms:
                await asyncio.sleep(piece.wait_ms / 1000)
            if self.closing or self.transport is None:
                return False  # the client went away (connection_lost cancels this task)
            if not n:
                self._log(req, path, body, decoded, (answer.status, sent_headers, content), decision, None, answer)
                if self.server.logged:
                    self.server.flush()  # handed over now, not at the end of the loop turn
            self.transport.write(piece.data)
        if not pieces:
            self._log(req, path, body, decoded, (answer.status, sent_headers, content), decision, None, answer)
        if close:
            self.closing = True  # nothing more is read or answered on this connection
            linger = plan.close_after_ms
            if linger:
                await asyncio.sleep(linger / 1000)
            self.close()
        return True

    def _frame(self, req: _Request, answer: Answer, decision: FaultDecision | None,
               ) -> tuple[bytes, bytes, bool, list[tuple[str, str]]]:
        """The answer's head and body as they go on the wire (an altering fault applied), whether
        the connection closes after it, and the headers sent (for the log)."""
        content = answer.body
        headers = answer.headers
        length = len(content)
        close = not req.keep_alive
        altered = core_mod.alter_body(content, decision) if decision is not None else None
        if altered is not None:
            if altered.drop_headers:
                drop = {h.lower() for h in altered.drop_headers}
                headers = [(k, v) for k, v in headers if k.lower() not in drop]
            content = altered.body
            length = len(content)
            if altered.promised_length is not None:
                # Promise the full length, deliver less, then hang up: a short read.
                length = altered.promised_length
                close = True
        if decision is not None and decision.link.close_after_ms is not None:
            close = True  # slow-close: the answer says so, and the close comes later
        # The status line and the answer's own headers, made once per distinct set (the mock
        # answers with the same few), and the header pairs the log is given for them.
        key = (answer.status, *headers)
        known = _HEADS.get(key)
        if known is None:
            lines = [_status_line(answer.status)]
            kept = []
            for k, v in headers:
                if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                    lines.append(b"%s: %s\r\n" % (_wire(k), _wire(v)))
                    kept.append((k, v))
            known = keep(_HEADS, key, (b"".join(lines), tuple(kept), {}), _HEADS_MAX)
        # ... and the whole head, with Content-Length and Connection, once per length and ending.
        ends = known[2]
        end = (length, close, req.http10)
        done = ends.get(end)
        if done is None:
            head = [known[0], b"Content-Length: %d\r\n" % length]
            sent = [*known[1], ("Content-Length", str(length))]
            if close:
                head.append(b"Connection: close\r\n")
                sent.append(("Connection", "close"))
            elif req.http10:
                head.append(b"Connection: keep-alive\r\n")  # an HTTP/1.0 client asked to keep the connection
            head.append(b"\r\n")
            done = keep(ends, end, (b"".join(head), tuple(sent)), _ENDS_MAX)
        head_bytes, sent_headers = done[0], list(done[1])
        if req.method == "HEAD":
            content = b""  # the headers a GET would get, no body (RFC 9110 9.3.2)
        return head_bytes, content, close, sent_headers

    def _log(self, req: _Request, path: str, body: bytes | None, decoded, sent, decision, error: str | None,
             answer: Answer | None = None) -> None:
        c = self.core
        server = self.server
        if server.verbose:
            log.info(f"{self.client} {req.method} {path} -> {sent[0] if sent else error}")
        if not c.logging and not c.reporter.active and c.journal is None:
            return
        started = req.started
        if sent:
            status, sent_headers, content = sent
            made = answer.logged(content) if answer is not None else None  # unless a fault altered it
        else:
            status = sent_headers = content = made = None
        batch = server.logged
        c.log_exchange(RawExchange(
            c.mode, started, round((time.time() - started) * 1000, 3), self.client, None, req.method, path, status,
            req.headers, body, sent_headers, content, decision.describe() if decision is not None else None, error,
            decoded, made, mailbox=req.mailbox,
        ), c.replay_note(answer) if answer is not None and c.replay is not None else None, batch)
        if batch:
            server.later()


class LeanServer:
    """The lean front listening on ``host:port`` (port 0 picks a free one), serving ``core``."""

    def __init__(self, ucs_core: UcsCore, host: str = "127.0.0.1", port: int = 0, *,
                 confdir: str = "~/.mitmproxy", verbose: bool = False, body_limit: int | None = None):
        self.core = ucs_core
        #: Bytes of a request body at most (413 past it); None: options.BODY_LIMIT.
        self.body_limit = body_limit_of({}) if body_limit is None else body_limit
        self.host, self.port = host, port
        self.verbose = verbose
        self.confdir = confdir
        self.connections: set[_Connection] = set()
        self.addresses: list[tuple[str, int]] = []
        self._sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task] = set()
        self._accepting: list[asyncio.Task] = []
        self._tls: TlsCertificates | None = None  # made at the first ClientHello
        self._tls_context: ssl.SSLContext | None = None
        #: Exchanges of this loop turn not yet handed to the log, and answers not yet written
        #: (connection, head, body, close after it): both go at the end of the turn (flush).
        self.logged: list[RawExchange] = []
        self.outbox: list[tuple[_Connection, bytes, bytes, bool]] = []
        self._flush_due = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False  # stop() has begun: an exchange cut short now was cut by it

    def later(self) -> None:
        """Flush at the end of this loop turn (once, however many answers the turn made)."""
        if not self._flush_due:
            self._flush_due = True
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Hand this turn's exchanges to the log, then write their answers (log before write)."""
        self._flush_due = False
        raws = self.logged
        if raws:
            self.logged = []
            self.core.submit_batch(raws)
        out = self.outbox
        if not out:
            return
        self.outbox = []
        for conn, head, content, close in out:
            transport = conn.transport
            if transport is None or transport.is_closing():
                continue  # the client went away meanwhile
            try:
                if len(content) < BIG_ANSWER:
                    transport.write(head + content)
                else:  # no copy of a big answer (a 2 MB list): the transport sends both pieces as they are
                    transport.writelines((head, content))
                if close:
                    transport.close()
            except Exception as e:  # one broken connection must not keep the others' answers back
                log.error(f"ucsproxy: could not write an answer to {conn.client}: {e!r}")
                transport.abort()

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Accept on ``sockets`` (already listening), or on new ones bound to host and port."""
        self._loop = asyncio.get_running_loop()
        if sockets is None:
            from .listeners import bind_listeners

            sockets = bind_listeners(self.host, self.port)
        for sock in sockets:
            self._sockets.append(sock)
            self.addresses.append(sock.getsockname()[:2])
        for sock in self._sockets:
            self._accepting.append(asyncio.ensure_future(self._accept(sock)))

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except (OSError, asyncio.CancelledError):
                if listener.fileno() == -1:
                    return
                raise
            conn.setblocking(False)
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            task = asyncio.ensure_future(self._open(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open(self, conn: socket.socket) -> None:
        """Peek at the first byte: a TLS ClientHello gets the TLS layer, anything else is plain HTTP."""
        loop = asyncio.get_running_loop()
        try:
            first = await self._peek(loop, conn)
            if not first:
                conn.close()
                return
            context = self._tls_for() if first[0] == TLS_HANDSHAKE else None
            await loop.connect_accepted_socket(lambda: _Connection(self), conn, ssl=context)
        except asyncio.CancelledError:
            conn.close()
            raise
        except (OSError, ValueError) as e:  # a handshake that failed, a client gone before it spoke
            log.debug(f"ucsproxy: connection dropped before HTTP: {e}")
            conn.close()

    @staticmethod
    async def _peek(loop, conn: socket.socket) -> bytes:
        while True:
            try:
                return conn.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                pass
            readable = loop.create_future()
            loop.add_reader(conn.fileno(), lambda: readable.done() or readable.set_result(None))  # noqa: B023 (called before the loop moves on)
            try:
                await readable
            finally:
                loop.remove_reader(conn.fileno())

    def _tls_for(self):
        if self._tls_context is None:
            from .tlscerts import TlsCertificates

            names = tuple(h for h in (self.host, socket.gethostname()) if h and h not in ("0.0.0.0", "::"))
            tls = self._tls = TlsCertificates(self.confdir, names)
            self._tls_context = tls.context()
        return self._tls_context

    def urls(self) -> str:
        return ", ".join(f"http(s)://{_url_host(h)}:{p}/EWS/Exchange.asmx" for h, p in self.addresses)

    def close_listeners(self) -> None:
        for task in self._accepting:
            task.cancel()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    async def stop(self, state: str = "") -> None:
        """Stop listening, let held connections go, close every connection, save state, close the log.

        An answer a fault still holds back (a delay, a timeout, a shaped answer part-written) is
        not waited for: its exchange is logged as stopped (STOPPED), as are requests read and
        queued behind it, before the log closes."""
        self.close_listeners()
        self.flush()
        self.stopping = True
        self.core.let_held_go()
        held = [conn.task for conn in self.connections if conn.task is not None]
        for conn in list(self.connections):
            conn.close()
        for task in held:
            task.cancel()
        pending = [t for t in self._tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending or held:
            await asyncio.gather(*pending, *held, return_exceptions=True)
        await asyncio.sleep(0)  # let the transports' close callbacks (and the tasks' done callbacks) run
        self.flush()  # the rows those made, before the log closes
        self.core.shutdown(state)


# What a path is, once per path: the control API, Autodiscover, the EWS endpoint, anything else.
# At most _PATHS_MAX paths of at most _PATH_KEPT characters are kept (together about 256 KB): a
# longer path (a target may be up to HEAD_MAX) is looked at each time, not kept.
_CONTROL, _AUTODISCOVER, _EWS, _OTHER = "control", "autodiscover", "ews", "other"
_PATHS: dict[str, str] = {}
_PATHS_MAX = 1024
_PATH_KEPT = 256


def _path_kind(path: str) -> str:
    from .autodiscover import endpoint
    from .protocol import is_ews_endpoint

    if is_control_path(path):
        kind = _CONTROL
    elif endpoint(path) is not None:
        kind = _AUTODISCOVER
    elif is_ews_endpoint(path):
        kind = _EWS
    else:
        kind = _OTHER
    if len(path) <= _PATH_KEPT:
        keep(_PATHS, path, kind, _PATHS_MAX)
    return kind


def _refusal_headers(body: bytes) -> list[tuple[str, str]]:
    """The header fields of a refusal (400, 413, 431, ...) with ``body``: it closes the connection."""
    return [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), ("Connection", "close")]


def _declared_length(req: _Request) -> int:
    """The Content-Length a request's headers declare (-1: none, or not a number)."""
    for k, v in req.headers:
        if k.lower() == "content-length":
            v = v.strip()
            return int(v) if v.isascii() and v.isdigit() else -1
    return -1


def body_limit_of(options: dict[str, Any]) -> int:
    """The body limit an option dict names (mitmproxy's ``body_size_limit``, the CLI's ``--body-limit``;
    options.BODY_LIMIT when it names none, no limit for None); raises core.ConfigError for a bad size."""
    value = options.get("body_size_limit", options_mod.BODY_LIMIT)
    try:
        limit = options_mod.parse_size(value)
    except ValueError as e:
        raise core_mod.ConfigError(f"--body-limit: {e}") from None
    return 1 << 62 if limit is None else limit


def _request_size(req: _Request, path: str, body: bytes) -> int:
    """About how many bytes a request took on the wire (request line, headers, body)."""
    return (len(req.method) + len(path) + 12 + sum(len(k) + len(v) + 4 for k, v in req.headers)
            + 2 + len(body))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ---------------------------------------------------------------------------
# Options (the same dicts runner.mock_options / replay_options build) to a core


def with_defaults(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` over every addon option's default from the options table, except two that suit a
    front that answers: the mode is mock, and there is no log unless ``ucs_db`` names one."""
    return {**options_mod.defaults(), "ucs_mode": "mock", "ucs_db": "", **options}


def core_from_options(options: dict[str, Any], *, writer: str = "process", lazy_log: bool = False) -> UcsCore:
    """A configured core from ucsproxy's option dict; raises core.ConfigError for a bad setting.

    An option not in ``options`` takes its default as :func:`with_defaults` says.
    """
    o = with_defaults(options)
    c = UcsCore()
    c.mode = o["ucs_mode"]
    c.fallthrough = bool(o["ucs_fallthrough"])
    c.lenient = bool(o["ucs_lenient"])
    c.domains = tuple(o["ucs_domains"] or ())
    c.reporter.console.enabled = bool(o["ucs_console"])  # the line per exchange, the exit summary
    try:
        c.build_model(state=o["ucs_state"], seed=o["ucs_seed"], item_list=o["ucs_item_list"], mailbox=o["ucs_mailbox"],
                      policy=o["ucs_policy"])
        c.build_replay(o["ucs_replay"], match=o["ucs_match"], stateful=bool(o["ucs_stateful"]), seed=o["ucs_seed"])
        c.build_faults(o["ucs_faults"], o["ucs_fault"], o["ucs_fault_seed"])
        c.configure_control(o["ucs_control"], o["ucs_control_token"] or None,
                            [o.get("listen_host", options_mod.BY_NAME["listen_host"].default)])
        core_mod.refuse_logging_into_the_replayed(c.mode, o["ucs_db"], o["ucs_replay"])
        c.open_store(o["ucs_db"], bool(o["ucs_keep_secrets"]), writer=writer, lazy=lazy_log,
                     redact_headers=o["ucs_redact_headers"], redact_patterns=o["ucs_redact_patterns"])
    except BaseException:
        c.reporter.console.enabled = False  # nothing was served: no "0 exchanges" summary above the error
        c.shutdown()
        raise
    return c


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed, else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


#: The serving process's collector thresholds: a young generation of 700 objects (Python's
#: default) is a collection every few exchanges, each walking the journal's and the model's
#: newest records; at 10,000 a busy mock spends about a tenth of that CPU on collecting.
GC_THRESHOLDS = (10_000, 20, 20)


def _collect_less() -> None:
    """Everything made while starting (modules, the schema, the model as loaded) is moved out of the
    collector's sight (gc.freeze: it stays as long as the process anyway), and young objects are
    collected less often. No collection first: it would hold the first answer back by 30-70 ms,
    for the little garbage starting leaves."""
    import gc

    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _announce(server: LeanServer, options: dict[str, Any]) -> None:
    from .cli.banner import startup_banner

    c, o = server.core, with_defaults(options)
    log.info(startup_banner(
        c.mode, server.addresses, db=o["ucs_db"], replay_source=o["ucs_replay"], match=o["ucs_match"],
        stateful=bool(o["ucs_stateful"]), state=o["ucs_state"], fault_rules=len(c.engine.rules()) if c.engine else 0,
        control=c.control.banner_note() if c.control is not None else ""))


def run_foreground(options: dict[str, Any], *, verbose: bool = False,
                   sockets: list[socket.socket] | None = None) -> int:
    """Serve until SIGINT / SIGTERM, then shut down cleanly (the log flushed, state saved).

    ``sockets``: already listening (the CLI binds before it imports this module), else bound here.
    Nothing is accepted before the core, its log writer included, is ready. Returns the number of
    exchanges that could not be written to the log (0 when all were). Raises core.ConfigError for
    a bad option, before anything is accepted, and core.StoppedWhileStarting when SIGINT or
    SIGTERM arrives while starting.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="[%(asctime)s.%(msecs)03d] %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    early: list[int] = []  # a signal while starting stops the process once the start is through
    previous = {sig: signal.signal(sig, lambda signum, frame: early.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        body_limit = body_limit_of(options)
        c = core_from_options(options)
        if early:
            c.shutdown()
            raise core_mod.StoppedWhileStarting(early[0])
    except BaseException:
        for sock in sockets or ():
            sock.close()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _collect_less()
    loop = _new_loop()
    asyncio.set_event_loop(loop)
    # Console lines are flushed at most every CONSOLE_FLUSH seconds, not once a request: a busy
    # mock writes them in a few system calls a second, and a person still sees each at once.
    c.reporter.console.flush_soon = lambda flush: loop.call_later(CONSOLE_FLUSH, flush)
    server = LeanServer(c, options.get("listen_host", options_mod.BY_NAME["listen_host"].default),
                        options.get("listen_port", options_mod.BY_NAME["listen_port"].default),
                        confdir=options.get("confdir", "~/.mitmproxy"), verbose=verbose, body_limit=body_limit)
    stopped = asyncio.Event()

    async def main() -> None:
        from .tlscerts import ensure_ca

        try:  # where there is no CA yet, clients find one to trust as soon as we listen
            ensure_ca(server.confdir)
        except OSError as e:
            log.warning(f"ucsproxy: no CA in {server.confdir} ({e}): TLS connections will fail")
        try:
            await server.start(sockets)
        except OSError:
            c.shutdown()
            raise
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopped.set)
        if hasattr(signal, "SIGPIPE"):
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        _announce(server, options)
        await stopped.wait()
        await server.stop(with_defaults(options)["ucs_state"])

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return c.unwritten


class _SharedLoop:
    """One event loop on a daemon thread that every in-process endpoint of this process shares."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or not cls._loop.is_running():
                loop = _new_loop()
                started = threading.Event()
                loop.call_soon(started.set)
                threading.Thread(target=loop.run_forever, name="ucsproxy-lean", daemon=True).start()
                started.wait()
                cls._loop = loop
            return cls._loop


class BackgroundLean:
    """The lean front in this process, on a shared background loop: what the pytest fixtures start.

    ``url`` is where it listens, ``core`` the live core (``core.model`` is the mock's state).
    The log is written on a thread (no writer process to start) and opened at the first exchange:
    set-up and tear-down take milliseconds.
    """

    def __init__(self, options: dict[str, Any], listen_host: str = "127.0.0.1", listen_port: int = 0,
                 startup_timeout: float = 30.0):
        self._options = options
        body_limit = body_limit_of(options)
        self.core = core_from_options(dict(options, listen_host=listen_host), writer="thread", lazy_log=True)
        self._loop = _SharedLoop.get()
        self.server = LeanServer(self.core, listen_host, listen_port, body_limit=body_limit)
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(startup_timeout)
        except BaseException:
            self.core.shutdown()
            raise
        self.address = self.server.addresses[0]

    @property
    def url(self) -> str:
        return f"http://{_url_host(self.address[0])}:{self.address[1]}"

    def call(self, fn, *args):
        """Run ``fn(*args)`` on the server's loop and return its result (fault rules change there)."""
        async def run():
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def stop(self, timeout: float = 15.0) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(with_defaults(self._options)["ucs_state"]),
                                         self._loop).result(timeout)
