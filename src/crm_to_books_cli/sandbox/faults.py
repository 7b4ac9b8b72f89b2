"""Fault injection: which request fails how, decided exactly (`*_next`) or by a seeded draw."""

from __future__ import annotations

import random
import threading
from collections import Counter
from typing import Literal

from crm_to_books_cli.sandbox.config import Faults
from crm_to_books_cli.sandbox.state import JSON, Shared

FaultName = Literal["fail_5xx", "reset_before", "hang_after_commit", "token_fail", "commit_late"]
_NAMES: tuple[FaultName, ...] = (
    "fail_5xx",
    "reset_before",
    "hang_after_commit",
    "token_fail",
    "commit_late",
)


class FaultInjector:
    def __init__(self, shared: Shared, faults: Faults) -> None:
        self._s = shared
        self.sent: Counter[str] = Counter()  # faults delivered: survives set(), cleared by reset
        self._wake = threading.Event()
        self.set(faults)

    @property
    def faults(self) -> Faults:
        return self._faults

    def set(self, faults: Faults) -> None:
        """Replace every knob. Requests held by latency or a hang are let go at once, so a test
        can hold requests in flight for as long as it needs and release them deterministically."""
        with self._s.lock:
            self._faults = faults
            self._remaining: dict[FaultName, int] = {
                name: getattr(faults, f"{name}_next") for name in _NAMES
            }
            self._rng = random.Random(faults.seed)
            self._wake.set()
            self._wake = threading.Event()

    def release_all(self) -> None:
        self._wake.set()

    def applies(self, action: str, kind: str | None, crm_id: str = "") -> bool:
        faults = self._faults
        if faults.scope == "imports" and action != "import":
            return False
        if faults.crm_id is not None and (action != "import" or faults.crm_id != crm_id):
            return False
        return faults.kind is None or faults.kind == kind

    def take(self, name: FaultName) -> bool:
        """Whether this request gets fault `name`; consumes one of its `*_next` count."""
        with self._s.lock:
            if self._remaining[name] > 0:
                self._remaining[name] -= 1
                return True
            rate: float = getattr(self._faults, f"{name}_rate")
            return rate > 0 and self._rng.random() < rate

    def latency(self) -> float:
        with self._s.lock:
            faults = self._faults
            jitter = faults.latency_jitter_seconds
            return faults.latency_seconds + (self._rng.uniform(0, jitter) if jitter else 0.0)

    def wait(self, seconds: float) -> None:
        """Sleep, cut short by `set` (new faults) or by the sandbox stopping."""
        if seconds > 0:
            self._wake.wait(seconds)

    def record(self, what: str) -> None:
        with self._s.lock:
            self.sent[what] += 1

    def snapshot(self) -> JSON:
        with self._s.lock:
            return {
                **self._faults.model_dump(mode="json"),
                "remaining": {f"{name}_next": n for name, n in self._remaining.items()},
            }
