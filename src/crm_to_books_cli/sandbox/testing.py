"""Pytest helpers for any suite that needs a Zoho sandbox.

In a conftest.py:

    from crm_to_books_cli.sandbox.testing import zoho_sandbox, zoho_sandbox_factory  # noqa: F401

then `def test_x(zoho_sandbox): ...`, or `zoho_sandbox_factory(reimport="duplicate")` for a
sandbox with other settings. Each sandbox listens on a free port and is stopped after the test.
`notify_receiver` is a local URL that records the notifications the sandbox CRM sends.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests

from crm_to_books_cli.sandbox.config import SandboxConfig
from crm_to_books_cli.sandbox.server import ZohoSandbox
from crm_to_books_cli.sandbox.state import Clock, ManualClock

__all__ = [
    "ManualClock",
    "NotifyReceiver",
    "SandboxFactory",
    "access_token",
    "access_token_with_scope",
    "notify_receiver",
    "wait_until",
    "zoho_sandbox",
    "zoho_sandbox_factory",
]


class SandboxFactory:
    """Starts sandboxes on free ports; `close()` stops every one it started."""

    def __init__(self) -> None:
        self._started: list[ZohoSandbox] = []

    def __call__(
        self, config: SandboxConfig | None = None, *, clock: Clock | None = None, **settings: Any
    ) -> ZohoSandbox:
        config = (config or SandboxConfig()).with_changes(**settings)
        sandbox = ZohoSandbox(port=0, config=config, clock=clock).start()
        self._started.append(sandbox)
        return sandbox

    def close(self) -> None:
        while self._started:
            self._started.pop().stop()


def token_request(
    sandbox: ZohoSandbox, session: requests.Session | None = None
) -> requests.Response:
    """One refresh-token grant for the seeded refresh token, as another client of the same
    Zoho connection would send it (it counts against the token's throttle window)."""
    return (session or requests).post(
        f"{sandbox.url}/oauth/v2/token",
        data={
            "grant_type": "refresh_token",
            "client_id": sandbox.client_id,
            "client_secret": sandbox.client_secret,
            "refresh_token": sandbox.refresh_token,
        },
        timeout=5,
    )


def access_token(sandbox: ZohoSandbox, session: requests.Session | None = None) -> str:
    """One access token for the seeded refresh token (counts against its throttle window)."""
    token: str = token_request(sandbox, session).json()["access_token"]
    return token


def access_token_with_scope(sandbox: ZohoSandbox, scope: str) -> str:
    """An access token of a new connection granted `scope` (comma-separated), as `connect`
    makes one from a self-client grant code."""
    url = f"{sandbox.url}/oauth/v2/token"
    client = {"client_id": sandbox.client_id, "client_secret": sandbox.client_secret}
    code = sandbox.issue_grant_code(scope=scope)
    grant = {"grant_type": "authorization_code", "code": code, **client}
    refresh_token = requests.post(url, data=grant, timeout=5).json()["refresh_token"]
    refresh = {"grant_type": "refresh_token", "refresh_token": refresh_token, **client}
    token: str = requests.post(url, data=refresh, timeout=5).json()["access_token"]
    return token


class NotifyReceiver:
    """A notify URL on this machine that records what the sandbox CRM POSTs to it.

    `status` (default 200) is what it answers; `delay` holds each answer that many seconds
    (released at once by `stop`), to make a delivery time out."""

    def __init__(self, status: int = 200, delay: float = 0.0, path: str = "/notify") -> None:
        self.status, self.delay, self.path = status, delay, path
        self.received: list[dict[str, Any]] = []  # {"path", "query", "headers", "body"}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                url = urlsplit(self.path)
                with receiver._lock:
                    receiver.received.append(
                        {
                            "path": url.path,
                            "query": dict(parse_qsl(url.query)),
                            "headers": dict(self.headers.items()),
                            "body": json.loads(raw) if raw else None,
                        }
                    )
                receiver._stopping.wait(receiver.delay)
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self.path}"

    @property
    def bodies(self) -> list[Any]:
        with self._lock:
            return [r["body"] for r in self.received]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Any]:
        """The first `count` notification bodies, once that many arrived."""
        wait_until(lambda: len(self.bodies) >= count, timeout)
        return self.bodies[:count]

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds (no sleep-and-hope)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.005)


@pytest.fixture
def zoho_sandbox_factory() -> Iterator[SandboxFactory]:
    factory = SandboxFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def zoho_sandbox(zoho_sandbox_factory: SandboxFactory) -> ZohoSandbox:
    return zoho_sandbox_factory()


@pytest.fixture
def notify_receiver() -> Iterator[NotifyReceiver]:
    with NotifyReceiver() as receiver:
        yield receiver
