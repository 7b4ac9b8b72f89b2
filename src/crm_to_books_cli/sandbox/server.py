"""The HTTP server and `ZohoSandbox`, the object tests and the local stack drive."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, quote, urlsplit

from crm_to_books_cli.sandbox import control
from crm_to_books_cli.sandbox.accounts import Accounts
from crm_to_books_cli.sandbox.books import Books, Route, route
from crm_to_books_cli.sandbox.config import (
    KINDS,
    MISSING_CRM_ID,
    RUNTIME_SETTINGS,
    SEEDED_CRM_RECORDS,
    Faults,
    Organization,
    SandboxConfig,
)
from crm_to_books_cli.sandbox.crm import Crm
from crm_to_books_cli.sandbox.faults import FaultInjector
from crm_to_books_cli.sandbox.state import (
    JSON,
    Clock,
    Reply,
    Shared,
    server_error,
    token_failure,
)

logger = logging.getLogger("crm_to_books_cli.sandbox")
_SECRET_PARAMS = frozenset({"client_secret", "refresh_token", "code", "access_token"})


class ZohoSandbox:
    """Zoho Accounts, Zoho Books and Zoho CRM (`crm`) on one local port (`url` is also the
    `api_domain`)."""

    def __init__(
        self,
        port: int = 0,
        config: SandboxConfig | None = None,
        *,
        host: str = "127.0.0.1",
        clock: Clock | None = None,
    ) -> None:
        config = config or SandboxConfig()
        self._address = (host, port)
        self._shared = Shared(config, clock)
        self._accounts = Accounts(self._shared)
        self.crm = Crm(self._shared, self._accounts.authenticate)
        self._books = Books(self._shared, self.crm.name_of)
        self._faults = FaultInjector(self._shared, config.faults)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("the sandbox is already running")
        server = _Server(self._address, self)
        host, port = server.server_address[:2]
        self._shared.url = f"http://{host!s}:{port}"
        self._server = server
        # stop() waits for the serve loop's next poll: keep it short, tests start hundreds.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="zoho-sandbox"
        )
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end every connection and request in progress, free the port."""
        server, self._server = self._server, None
        if server is None:
            return
        self._faults.release_all()  # requests held by latency or a hang finish now
        self.crm.stop()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what a client needs -----------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self._shared.url:
            raise RuntimeError("the sandbox is not started")
        return self._shared.url

    @property
    def config(self) -> SandboxConfig:
        return self._shared.config

    @property
    def client_id(self) -> str:
        return self.config.client_id

    @property
    def client_secret(self) -> str:
        return self.config.client_secret

    @property
    def refresh_token(self) -> str:
        return self.config.refresh_token

    @property
    def organizations(self) -> list[str]:
        return self._books.organization_ids

    @property
    def crm_ids(self) -> dict[str, Any]:
        """Seeded CRM ids per kind, and under "missing" an id that is in no CRM module."""
        ids: dict[str, Any] = {kind: list(SEEDED_CRM_RECORDS[kind]) for kind in KINDS}
        ids["missing"] = MISSING_CRM_ID
        return ids

    def startup_info(self) -> JSON:
        return {
            "url": self.url,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "refresh_token": self.refresh_token,
            "organizations": self.organizations,
            "crm_ids": self.crm_ids,
        }

    # -- observation -------------------------------------------------------------------------

    def counters(self, window_seconds: float | None = None) -> JSON:
        """A JSON-able snapshot. `max_requests_in_window` spans `window_seconds`
        (default: the configured rate window)."""
        with self._shared.lock:
            sent = self._faults.sent
            return {
                **self._accounts.counters(),
                **self._books.counters(window_seconds),
                **{
                    name: sent[name]
                    for name in ("errors_5xx", "resets", "hangs", "drops", "late_commits")
                },
                "token_errors_5xx": sent["token_errors_5xx"],
                "token_errors_other": sum(
                    n for name, n in sent.items() if name.startswith("token_errors_html")
                )
                + sent["token_errors_unknown_error"],
                "crm": self.crm.counters(),
            }

    def state(self, window_seconds: float | None = None) -> JSON:
        with self._shared.lock:
            secret = {"client_secret", "refresh_token", "faults"}
            return {
                "url": self._shared.url,
                "counters": self.counters(window_seconds),
                "config": self.config.model_dump(mode="json", exclude=secret),
                "faults": self._faults.snapshot(),
            }

    def fault_state(self) -> JSON:
        """The fault knobs in force, and how many of each `*_next` remain."""
        return self._faults.snapshot()

    # -- controls ----------------------------------------------------------------------------

    def set_faults(self, **knobs: Any) -> Faults:
        """Replace all fault knobs (those not given go back to none)."""
        faults = Faults.model_validate(knobs)
        self._faults.set(faults)
        return faults

    def clear_faults(self) -> None:
        self._faults.set(Faults())

    def set_limits(
        self,
        organization_id: str,
        requests_per_minute: int | None = None,
        daily_limit: int | None = None,
        max_concurrency: int | None = None,
    ) -> Organization:
        return self._books.set_limits(
            organization_id,
            requests_per_minute=requests_per_minute,
            daily_limit=daily_limit,
            max_concurrency=max_concurrency,
        )

    def revoke_refresh_token(self, token: str | None = None) -> None:
        self._accounts.set_revoked(token, revoked=True)

    def restore_refresh_token(self, token: str | None = None) -> None:
        self._accounts.set_revoked(token, revoked=False)

    def issue_grant_code(self, scope: str = "ZohoBooks.fullaccess.all") -> str:
        return self._accounts.issue_grant_code(scope)

    def configure(self, **settings: Any) -> SandboxConfig:
        """Change behaviour at run time (reimport mode, windows, ...); not seeds or credentials."""
        refused = set(settings) - RUNTIME_SETTINGS
        if refused:
            raise ValueError(f"not changeable at run time: {', '.join(sorted(refused))}")
        with self._shared.lock:
            self._shared.config = self.config.with_changes(**settings)
            return self._shared.config

    def reset(self) -> None:
        """Books records, counters, rate and token windows back to the start. Issued tokens,
        revocations, limits and fault knobs stay."""
        with self._shared.lock:
            self._accounts.reset()
            self._books.reset()
            self._faults.sent.clear()
            self.crm.reset()

    # -- request handling (called by _Handler) -----------------------------------------------

    def _token(self, params: Mapping[str, str]) -> Reply:
        faults = self._faults
        faults.wait(faults.faults.token_latency_seconds)
        if faults.take("token_fail"):
            answer = faults.faults.token_fail_answer
            faults.record("token_errors_5xx" if answer == "5xx" else f"token_errors_{answer}")
            return token_failure(answer, faults.faults.fail_5xx_status)
        return self._accounts.token(params)

    def _books_request(self, handler: _Handler, path: str, query: Mapping[str, str]) -> None:
        routed = route(handler.command, path, query)
        if isinstance(routed, Reply):
            handler.send(routed)
            return
        faulty = self._faults.applies(routed.action, routed.kind, routed.crm_id)
        if faulty and self._faults.take("reset_before"):
            self._faults.record("resets")
            handler.abort()
            return
        token = self._accounts.authenticate(handler.headers.get("Authorization"))
        refusal = token if isinstance(token, Reply) else self._books.authorize(routed, token)
        organization_id = routed.organization_id or ""
        if refusal is None:
            refusal = self._books.admit(organization_id)
        if refusal is not None:
            handler.send(refusal, self._books.rate_headers(routed.organization_id))
            return
        slot = _Slot(self._books, organization_id)
        try:
            reply = self._admitted(handler, routed, faulty, slot)
            if reply is not None:
                # Free the slot before answering: a client that sends its next request the
                # moment it reads this answer must not find the slot still taken.
                headers = self._books.rate_headers(organization_id)
                slot.release()
                handler.send(reply, headers)
        finally:
            slot.release()

    def _admitted(
        self, handler: _Handler, routed: Route, faulty: bool, slot: _Slot
    ) -> Reply | None:
        """Serve an admitted request with its faults; None when the connection was dropped."""
        faults = self._faults
        if not faulty:
            return self._books.handle(routed)
        faults.wait(faults.latency())
        knobs = faults.faults
        if not knobs.fail_5xx_after_commit and faults.take("fail_5xx"):
            faults.record("errors_5xx")
            return server_error(knobs.fail_5xx_status)
        if routed.action == "import" and faults.take("commit_late"):
            slot.release()
            faults.record("late_commits")
            faults.wait(knobs.commit_late_seconds)
            self._books.handle(routed)  # committed long after the client gave up
            handler.abort()
            return None
        reply = self._books.handle(routed)
        if knobs.fail_5xx_after_commit and faults.take("fail_5xx"):
            faults.record("errors_5xx")
            return server_error(knobs.fail_5xx_status)
        if faults.take("hang_after_commit"):
            slot.release()
            if knobs.drop_after_commit or knobs.hang_seconds == 0:
                faults.record("drops")
                handler.abort()
                return None
            faults.record("hangs")
            faults.wait(knobs.hang_seconds)
        return reply

    def _log(self, handler: _Handler, status: int) -> None:
        if self.config.log_requests:
            url = urlsplit(handler.path)
            query = "&".join(
                f"{k}={'***' if k in _SECRET_PARAMS else quote(v)}"
                for k, v in parse_qsl(url.query, keep_blank_values=True)
            )
            path = f"{url.path}?{query}" if query else url.path
            logger.info(
                "sandbox request", extra={"method": handler.command, "path": path, "status": status}
            )


class _Slot:
    """An organization's in-flight slot, released exactly once."""

    def __init__(self, books: Books, organization_id: str) -> None:
        self._books, self._organization_id = books, organization_id
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._books.release(self._organization_id)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # benchmarks open many connections at once

    def __init__(self, address: tuple[str, int], sandbox: ZohoSandbox) -> None:
        self.sandbox = sandbox
        self.stopping = False
        self._connections: set[socket.socket] = set()
        self._busy: set[socket.socket] = set()  # connections with a request being answered
        self._handler_threads: set[threading.Thread] = set()
        self._tracking = threading.Lock()
        super().__init__(address, _Handler)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._tracking:
            self._connections.add(request)
            self._handler_threads.add(threading.current_thread())
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._tracking:
                self._connections.discard(request)
                self._handler_threads.discard(threading.current_thread())

    def set_busy(self, connection: socket.socket, busy: bool) -> None:
        with self._tracking:
            (self._busy.add if busy else self._busy.discard)(connection)

    def close_connections(self) -> None:
        """Let requests in progress answer, and end kept-alive connections, so every handler
        thread finishes instead of waiting for a next request that never comes."""
        self.stopping = True  # a busy handler closes its connection once it has answered
        with self._tracking:
            idle = self._connections - self._busy
            threads = list(self._handler_threads)
        self._shut(idle)
        for thread in threads:
            thread.join(timeout=5)
        with self._tracking:
            stuck = set(self._connections)
        self._shut(stuck)

    @staticmethod
    def _shut(connections: set[socket.socket]) -> None:
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real clients use it
    timeout = 120  # idle keep-alive connections end eventually
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm meets the
        # client's delayed ACK and every answer waits ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _dispatch(self) -> None:
        self.server.set_busy(self.connection, True)
        try:
            self._serve()
        finally:
            self.server.set_busy(self.connection, False)
            if self.server.stopping:
                self.close_connection = True

    def _serve(self) -> None:
        sandbox = self.server.sandbox
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        body = self._read_body()
        if url.path == "/oauth/v2/token" and self.command == "POST":
            form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            self.send(sandbox._token({**query, **form}))
        elif url.path.startswith("/__sandbox/"):
            self.send(control.handle(sandbox, self.command, url.path, query, body))
        elif url.path.startswith("/crm/"):
            auth, since = self.headers.get("Authorization"), self.headers.get("If-Modified-Since")
            self.send(sandbox.crm.serve(self.command, url.path, query, body, auth, since))
        else:
            sandbox._books_request(self, url.path, query)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True  # no client of Zoho sends chunked bodies; don't parse
            return b""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send(self, reply: Reply | None, headers: Mapping[str, str] | None = None) -> None:
        if reply is None:
            return
        if reply.status in (204, 304):  # no body, by definition
            data, content_type = b"", ""
        elif isinstance(reply.body, str):
            data, content_type = reply.body.encode(), "text/html;charset=UTF-8"
        else:
            data, content_type = json.dumps(reply.body).encode(), "application/json;charset=UTF-8"
        self.server.sandbox._log(self, reply.status)  # first: a test may read logs on answer
        try:
            self.send_response(reply.status)
            if content_type:
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
            for name, value in {**reply.headers, **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True  # the client left (a hang outlived its timeout)

    def abort(self) -> None:
        """Close with a TCP reset: the client sees the connection reset and no answer."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    def version_string(self) -> str:
        return "ZohoSandbox"

    def log_message(self, format: str, *args: Any) -> None:
        """Silent by default; `log_requests` logs through `ZohoSandbox._log`, redacted."""
