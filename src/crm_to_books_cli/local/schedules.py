"""The maintenance schedules: like EventBridge Scheduler, invoke a function every N seconds."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crm_to_books_cli.local.emulator import ACCOUNT_ID, PARTITION, REGION
from crm_to_books_cli.local.runtime import Invocation, RuntimeStopped

log = logging.getLogger(__name__)
Invoke = Callable[[str, dict[str, Any]], Invocation]


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str  # what `fire` takes: the function's logical name, e.g. "token-keeper"
    schedule: str  # the schedule's physical name
    function: str  # the physical function name
    every_seconds: float
    # The target's input, sent as the event (as Scheduler does); None: its default event.
    input: dict[str, Any] | None = None


def scheduled_event(schedule: str) -> dict[str, Any]:
    """The default notification EventBridge Scheduler sends a Lambda target given no input
    (`detail` is the string "{}", as Powertools' EventBridgeModel expects from Scheduler)."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "account": ACCOUNT_ID,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "region": REGION,
        "resources": [
            f"arn:{PARTITION}:scheduler:{REGION}:{ACCOUNT_ID}:schedule/default/{schedule}"
        ],
        "detail": "{}",
    }


class Scheduler:
    """One timer thread per schedule; the first firing comes one period after start."""

    def __init__(self, schedules: list[Schedule], invoke: Invoke) -> None:
        self.schedules = {s.name: s for s in schedules}
        self._invoke = invoke
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(s,), name=f"schedule-{s.name}", daemon=True)
            for s in schedules
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join()

    def fire(self, name: str) -> Invocation:
        """Invoke the schedule's function now and wait for the outcome."""
        schedule = self.schedules[name]
        event = schedule.input if schedule.input is not None else scheduled_event(schedule.schedule)
        invocation = self._invoke(schedule.function, event)
        outcome = "ok" if invocation.ok else (invocation.error or {}).get("errorType")
        log.info("schedule %s fired %s: %s", name, schedule.function, outcome)
        return invocation

    def _run(self, schedule: Schedule) -> None:
        while not self._stopping.wait(schedule.every_seconds):
            try:
                self.fire(schedule.name)
            except RuntimeStopped:
                return
