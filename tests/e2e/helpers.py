"""Helpers for end-to-end tests: waiting on conditions, reading container logs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from crm_to_books_cli.local import LocalStack

# Queue timings of the test stacks: a failed message is visible again after 2 s and reaches
# the DLQ on its third failure (instead of 180 s and the eighth).
VISIBILITY_TIMEOUT = 2
MAX_RECEIVE_COUNT = 3
# An organization of `local_stack`'s sandbox that Zoho grants one call a minute: once it is
# spent, a synchronous import is told to retry (429). Only the tests of that use it.
THROTTLED_ORG = "700100209"


def own_stack(prefix: str, logs: Logs, **options: Any) -> LocalStack:
    """A test module's own local stack (the real handlers) on free ports, with the test
    stacks' queue timings: a failed message back after 2 s, dead-lettered on its third
    receive."""
    defaults: dict[str, Any] = {
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "max_receive_count": MAX_RECEIVE_COUNT,
        "batching_window": 0.5,
    }
    return LocalStack(prefix=prefix, api_port=0, aws_port=0, log_sink=logs, **defaults | options)


def wait_until[T](
    check: Callable[[], T | None], what: str, timeout: float = 20.0, interval: float = 0.05
) -> T:
    """Poll `check` every `interval` seconds until it returns something truthy; fail after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class Logs:
    """A LocalStack log sink that keeps every container line, for tests to wait on."""

    def __init__(self) -> None:
        self._lines: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, function: str, line: str) -> None:
        with self._lock:
            self._lines.append((function, line))

    def all(self) -> list[tuple[str, str]]:
        """Every (function, line), in the order they arrived."""
        with self._lock:
            return list(self._lines)

    def lines(self, function: str | None = None) -> list[str]:
        with self._lock:
            return [line for f, line in self._lines if function in (None, f)]

    def records(
        self,
        function: str | None = None,
        where: Callable[[dict[str, Any]], bool] | None = None,
        **fields: Any,
    ) -> list[dict[str, Any]]:
        """The JSON lines (of `function`, if given) with these `fields` that pass `where`."""
        found = []
        for line in self.lines(function):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if all(record.get(k) == v for k, v in fields.items()) and (not where or where(record)):
                found.append(record)
        return found

    def wait_for(
        self,
        function: str | None = None,
        count: int = 1,
        timeout: float = 20.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
        **fields: Any,
    ) -> list[dict[str, Any]]:
        """At least `count` such records, waiting up to `timeout` seconds for them."""

        def enough() -> list[dict[str, Any]] | None:
            found = self.records(function, where, **fields)
            return found if len(found) >= count else None

        return wait_until(enough, f"{count} record(s) {fields} from {function or 'any'}", timeout)


class FakeSandbox:
    """Stands in for ZohoSandbox where no handler talks to Zoho."""

    url = "http://127.0.0.1:9"  # the discard port: nothing answers
    client_id = "1000.FAKECLIENT"
    client_secret = "fake-client-secret-value"
    refresh_token = "1000.fake-refresh-token-value"
    organizations = ("700100200", "700100201")
    crm_ids = {
        "account": ["3652397000000100001"],
        "contact": ["3652397000000200001"],
        "vendor": ["3652397000000300001"],
        "item": ["3652397000000400001"],
        "missing": "3652397000000999999",
    }

    def __init__(self) -> None:
        self.running = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False
