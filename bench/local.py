"""The local stack (`crm_to_books_cli.local.LocalStack`) for the end-to-end benchmarks.

Started on free ports with a zero-latency sandbox and no Zoho limit, so what is measured is the
service itself. `Unavailable` says why a benchmark has to be skipped: the stack cannot be
imported, does not start, or does not answer a first import.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

from crm_to_books_cli.sandbox import SandboxConfig, ZohoSandbox
from crm_to_books_cli.sandbox.config import DEFAULT_ORGANIZATIONS
from crm_to_books_cli.sandbox.testing import access_token

NO_LIMIT = {"requests_per_minute": 10_000, "daily_limit": 10_000_000, "max_concurrency": 100}


class Unavailable(Exception):
    """The local stack cannot run this benchmark."""


class Lines:
    """A LocalStack log sink: keeps the containers' last lines, for the skip reason."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, function: str, line: str) -> None:
        with self._lock:
            self.lines = [*self.lines[-200:], line]

    def last_error(self) -> str | None:
        for line in reversed(self.lines):
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                record = json.loads(line)
                if "errorMessage" in record:
                    return f"{record.get('errorType')}: {record['errorMessage']}"[:300]
                if record.get("level") in {"ERROR", "CRITICAL"}:
                    return f"{record.get('message')} {record.get('exception', '')}"[-300:]
        return None


class EmulatorErrors(logging.Handler):
    """Counts the AWS emulator's failed requests (werkzeug logs them) instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        error = record.exc_info[1] if record.exc_info else None
        lines = record.getMessage().strip().splitlines()
        self.last = f"{type(error).__name__}: {error}" if error else (lines or [""])[-1][:200]


@dataclass
class Local:
    stack: Any  # crm_to_books_cli.local.LocalStack, imported only if present
    org: str
    lines: Lines
    emulator_errors: EmulatorErrors


@contextlib.contextmanager
def local_stack(**options: Any) -> Iterator[Local]:
    """A started local stack and the organization to import into; raises Unavailable."""
    try:
        from crm_to_books_cli.local import LocalStack
    except ImportError as exc:
        raise Unavailable(f"local stack not available ({exc})") from None
    organizations = tuple(o.with_changes(**NO_LIMIT) for o in DEFAULT_ORGANIZATIONS)
    config = SandboxConfig(organizations=organizations, auto_create_crm_records=True)  # any id
    sandbox = ZohoSandbox(port=0, config=config)
    org = organizations[0].organization_id
    lines = Lines()
    stack = LocalStack(
        # moto's backends outlive a stack in this process: fresh names, or the next stack would
        # find the last one's token, pointing at a sandbox that is gone.
        prefix=f"bench-{uuid.uuid4().hex[:8]}",
        api_port=0,
        aws_port=0,
        sandbox=sandbox,
        log_sink=lines,
        settings={"organizations": {o.organization_id: NO_LIMIT for o in organizations}},
        **options,
    )
    errors, werkzeug = EmulatorErrors(), logging.getLogger("werkzeug")
    werkzeug.addHandler(errors)
    werkzeug.propagate = False
    try:
        stack.start()
    except Exception as exc:
        werkzeug.removeHandler(errors)
        raise Unavailable(f"local stack did not start ({type(exc).__name__}: {exc})") from None
    try:
        answer = post_import(stack.api_url, org, "item", 1)
        if answer.status_code != 200:
            why = lines.last_error() or answer.text[:200]
            raise Unavailable(
                f"local stack not usable: a probe import answered {answer.status_code} ({why})"
            )
        yield Local(stack, org, lines, errors)
    finally:
        stack.stop()
        werkzeug.removeHandler(errors)
        werkzeug.propagate = True


def post_import(api_url: str, org: str, kind: str, crm_id: int) -> requests.Response:
    return requests.post(
        f"{api_url}/v1/crm/{kind}/{crm_id}/import", params={"organization_id": org}, timeout=35
    )


def sandbox_latency(sandbox: ZohoSandbox, org: str, count: int) -> list[float]:
    """The sandbox's own answer time for an import, called directly (no service around it)."""
    token = access_token(sandbox)
    seconds = []
    with requests.Session() as session:
        session.headers["Authorization"] = f"Zoho-oauthtoken {token}"
        for n in range(count):
            started = time.perf_counter()
            answer = session.post(
                f"{sandbox.url}/books/v3/crm/item/{9_000_000 + n}/import",
                params={"organization_id": org},
                timeout=5,
            )
            seconds.append(time.perf_counter() - started)
            answer.raise_for_status()
    return seconds
