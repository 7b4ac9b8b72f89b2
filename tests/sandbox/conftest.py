"""Fixtures for the sandbox's own tests: every test gets fresh sandboxes on free ports.

`sandbox` runs on a ManualClock (`clock`), so windows and expiries are stepped, never slept.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from crm_to_books_cli.sandbox import ManualClock, ZohoSandbox
from crm_to_books_cli.sandbox.testing import (  # noqa: F401 (fixtures)
    SandboxFactory,
    notify_receiver,
    zoho_sandbox,
    zoho_sandbox_factory,
)


class Client:
    """Just enough of a Zoho client to exercise the sandbox over HTTP."""

    def __init__(self, sandbox: ZohoSandbox) -> None:
        self.sb = sandbox
        self.http = requests.Session()
        self.org = sandbox.organizations[0]
        self._token: str | None = None

    def token_request(self, **params: str) -> requests.Response:
        data = {
            "grant_type": "refresh_token",
            "client_id": self.sb.client_id,
            "client_secret": self.sb.client_secret,
            "refresh_token": self.sb.refresh_token,
            **params,
        }
        return self.http.post(f"{self.sb.url}/oauth/v2/token", data=data, timeout=5)

    def new_token(self, **params: str) -> str:
        token: str = self.token_request(**params).json()["access_token"]
        return token

    @property
    def token(self) -> str:
        if self._token is None:
            self._token = self.new_token()
        return self._token

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Zoho-oauthtoken {token or self.token}"}

    def import_(
        self, kind: str, crm_id: str, org: str | None = None, token: str | None = None, **kw: Any
    ) -> requests.Response:
        kw.setdefault("timeout", 5)
        return self.http.post(
            f"{self.sb.url}/books/v3/crm/{kind}/{crm_id}/import",
            params={"organization_id": org or self.org},
            headers=self.headers(token),
            **kw,
        )

    def get(self, path: str, token: str | None = None, **params: str) -> requests.Response:
        params.setdefault("organization_id", self.org)
        return self.http.get(
            f"{self.sb.url}{path}", params=params, headers=self.headers(token), timeout=5
        )

    def lookup(self, kind: str, crm_id: str, org: str | None = None) -> list[dict[str, Any]]:
        path, param = {
            "account": ("/books/v3/contacts", "zcrm_account_id"),
            "contact": ("/books/v3/contacts", "zcrm_contact_id"),
            "vendor": ("/books/v3/contacts", "zcrm_vendor_id"),
            "item": ("/books/v3/items", "zcrm_product_id"),
        }[kind]
        answer = self.get(path, organization_id=org or self.org, **{param: crm_id})
        assert answer.status_code == 200, answer.text
        found: list[dict[str, Any]] = answer.json()["items" if kind == "item" else "contacts"]
        return found

    def crm(
        self,
        method: str,
        path: str,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> requests.Response:
        """A Zoho CRM API call: `path` is under /crm/v8/."""
        kw.setdefault("timeout", 5)
        headers = {**self.headers(token), **(headers or {})}
        return self.http.request(method, f"{self.sb.url}/crm/v8/{path}", headers=headers, **kw)

    def records(
        self,
        module: str = "Accounts",
        since: str | None = None,
        token: str | None = None,
        **params: str,
    ) -> requests.Response:
        """Get Records, `since` as If-Modified-Since."""
        headers = {"If-Modified-Since": since} if since else {}
        return self.crm("GET", module, token, headers, params=params)

    def watch(
        self, method: str, body: Any = None, token: str | None = None, **params: str
    ) -> requests.Response:
        return self.crm(method, "actions/watch", token, json=body, params=params)

    def new_id(self, kind: str = "account", **fields: Any) -> str:
        """The id of a new CRM record of `kind` (only CRM records import)."""
        crm_id: str = self.sb.crm.create_record(kind, **fields)["id"]
        return crm_id

    def control(self, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        url = f"{self.sb.url}/__sandbox/{path}"
        if body is None and path.startswith("state"):
            return self.http.get(url, timeout=5)
        return self.http.post(url, json=body or {}, timeout=5)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def start(zoho_sandbox_factory: SandboxFactory, clock: ManualClock) -> Callable[..., ZohoSandbox]:  # noqa: F811
    """Start a sandbox on the test's ManualClock with settings: `start(reimport="error")`."""
    return lambda **settings: zoho_sandbox_factory(clock=clock, **settings)


@pytest.fixture
def sandbox(start: Callable[..., ZohoSandbox]) -> ZohoSandbox:
    return start()


@pytest.fixture
def client(sandbox: ZohoSandbox) -> Client:
    return Client(sandbox)


@pytest.fixture
def client_for() -> Callable[[ZohoSandbox], Client]:
    return Client


class CliProcess:
    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def first_line(self, timeout: float = 20) -> dict[str, Any]:
        """The JSON line printed on start (read on a thread so a silent process cannot hang us)."""
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        assert line and line[0], f"no startup line; stderr: {self.stderr_if_exited()}"
        info: dict[str, Any] = json.loads(line[0])
        return info

    def stderr_if_exited(self) -> str:
        return self.proc.stderr.read() if self.proc.poll() is not None else "(still running)"  # type: ignore[union-attr]

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 10) -> tuple[int, str]:
        self.proc.send_signal(signum)
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out


@pytest.fixture
def cli() -> Iterator[Callable[..., CliProcess]]:
    started: list[CliProcess] = []

    def run(*args: str) -> CliProcess:
        started.append(CliProcess(list(args)))
        return started[-1]

    yield run
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
        process.proc.communicate()
