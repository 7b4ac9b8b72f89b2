"""Pytest helpers for any suite that needs a Zoho sandbox.

In a conftest.py:

    from crm_to_books_cli.sandbox.testing import zoho_sandbox, zoho_sandbox_factory  # noqa: F401

then `def test_x(zoho_sandbox): ...`, or `zoho_sandbox_factory(reimport="duplicate")` for a
sandbox with other settings. Each sandbox listens on a free port and is stopped after the test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from crm_to_books_cli.sandbox.config import SandboxConfig
from crm_to_books_cli.sandbox.server import ZohoSandbox
from crm_to_books_cli.sandbox.state import Clock, ManualClock

__all__ = [
    "ManualClock",
    "SandboxFactory",
    "access_token",
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
