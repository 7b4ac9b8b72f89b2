"""The engine, assembled: one `Importer` per process (container) that the handlers call.

Each owner of an import is its own class, readable alone:
- `attempt.Attempt`: one import, from its lease to its record;
- `intake.Intake`: requests accepted for later become queue messages; poison is recorded;
- `redrive.Redrive`: the scheduled job that owns parked imports;
- `keeper.TokenKeeper`: the scheduled job that keeps the shared access tokens fresh.
They share one ledger, limiter and token provider, built here with production defaults
(tests pass their own).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from crm_to_books.attempt import Attempt, ImportOutcome
from crm_to_books.events import OutcomePublisher
from crm_to_books.intake import Intake
from crm_to_books.keeper import TokenKeeper
from crm_to_books.ledger import Ledger
from crm_to_books.limiter import RateLimiter, Reservation
from crm_to_books.models import ImportRecord, ImportRequest
from crm_to_books.ports import Holder
from crm_to_books.redrive import Redrive
from crm_to_books.settings import Settings, get_settings
from crm_to_books.tokens import TokenProvider
from crm_to_books.zoho import ZohoClient

__all__ = ["ImportOutcome", "Importer"]


class Importer:
    """Every dependency has a production default built on first use."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        ledger: Ledger | None = None,
        limiter: RateLimiter | None = None,
        tokens: TokenProvider | None = None,
        zoho: ZohoClient | None = None,
        events: OutcomePublisher | None = None,
        sqs: Any = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings or get_settings()
        s = self.settings
        self.zoho = zoho or ZohoClient(
            connect_timeout=s.zoho_connect_timeout, read_timeout=s.zoho_read_timeout, clock=clock
        )
        self.limiter = limiter or RateLimiter(
            s.state_table, window_seconds=s.rate_window_seconds, clock=clock, sleep=sleep
        )
        self.ledger = ledger or Ledger(
            s.ledger_table, clock=clock, permits=self.limiter, sleep=sleep
        )
        self.tokens = tokens or TokenProvider(s, self.zoho, clock=clock, sleep=sleep)
        self.events = events or OutcomePublisher(s.event_bus_name)
        self.intake = Intake(s, self.ledger, sqs)
        self.attempt = Attempt(
            s,
            ledger=self.ledger,
            limiter=self.limiter,
            tokens=self.tokens,
            zoho=self.zoho,
            events=self.events,
            intake=self.intake,
            clock=clock,
            sleep=sleep,
        )
        self.redrive = Redrive(s, self.ledger, self.tokens, self.intake, clock=clock)
        self.keeper = TokenKeeper(s, self.tokens)

    def run(
        self,
        request: ImportRequest,
        *,
        last_delivery: bool = False,
        sync: bool = False,
        holder: Holder | None = None,
        reservation: Reservation | None = None,
    ) -> ImportOutcome:
        return self.attempt.run(
            request,
            last_delivery=last_delivery,
            sync=sync,
            holder=holder,
            reservation=reservation,
        )

    def park_known(self, requests: Sequence[ImportRequest]) -> list[ImportOutcome]:
        return self.attempt.park_known(requests)

    def accept(self, request: ImportRequest) -> ImportRecord:
        return self.intake.accept(request)

    def enqueue(self, request: ImportRequest, delay_seconds: float = 0) -> None:
        self.intake.enqueue(request, delay_seconds)

    def reject(
        self, kind: str, organization_id: str, crm_id: str, source: str, reason: str
    ) -> ImportRecord | None:
        return self.intake.reject(kind, organization_id, crm_id, source, reason)

    def redrive_due(self) -> int:
        return self.redrive.run()

    def keep_tokens_fresh(self) -> list[dict[str, str]]:
        return self.keeper.run()
