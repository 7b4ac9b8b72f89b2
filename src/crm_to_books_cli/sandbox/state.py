"""What every part of the sandbox shares: one lock, one clock, the live config, and replies."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from crm_to_books_cli.sandbox.config import SandboxConfig

Clock = Callable[[], float]
JSON = dict[str, object]


class ManualClock:
    """A clock that only moves when told: tests step through windows without sleeping."""

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class Shared:
    """One lock guards all sandbox state: operations are microseconds, so contention is moot
    and there is no lock ordering to get wrong."""

    def __init__(self, config: SandboxConfig, clock: Clock | None = None) -> None:
        self.lock = threading.RLock()
        self.clock: Clock = clock or time.monotonic
        self.config = config
        self.url = ""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Mapping[str, object] | str  # a str is sent as HTML, like a failing front end would
    headers: Mapping[str, str] = field(default_factory=dict)


def books_error(status: int, code: int, message: str) -> Reply:
    return Reply(status, {"code": code, "message": message})


def server_error(status: int) -> Reply:
    """A 5xx as Zoho's front ends send them: JSON from the application, HTML from the edge."""
    if status == 500:
        return Reply(500, {"code": 500, "message": "Internal Server Error. Please try again."})
    text = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}[status]
    return Reply(status, f"<html><body><h1>{status} {text}</h1></body></html>")


def token_failure(answer: str, status: int) -> Reply:
    """A token endpoint failing in a way Zoho does not document: not a refusal of the token."""
    if answer == "html_403":
        return Reply(403, "<html><body><h1>403 Forbidden</h1>Request blocked.</body></html>")
    if answer == "html_429":
        return Reply(429, "<html><body><h1>429 Too Many Requests</h1></body></html>")
    if answer == "unknown_error":
        return Reply(400, {"error": "general_error", "error_description": "try again"})
    return server_error(status)
