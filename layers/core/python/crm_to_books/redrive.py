"""The re-drive job (EventBridge schedule): the owner of every parked import.

Each run sends again, through the kind's queue:
- parked records whose time has come (daily cap reset, token block over, a look-up to retry);
- parked records whose cause is known to be gone before their time: a connection no longer
  marked broken (`crm-to-books connect` replaced its refresh token), a scope no longer marked
  missing on it;
- attempts that died with nobody to retry them (an `in_progress` record whose lease ran out:
  the import then starts with a look-up, so it cannot be duplicated);
- as a last net, records whose message is gone: `retrying` ones neither parked nor
  dead-lettered a day past their next attempt, and `queued` ones a day old. A message still
  waiting in a backlog that long gets a twin; the ledger answers the second without calling
  Zoho.
It sends a parked record's message first, then unparks the record, only if nothing wrote it
since it was read (the message may already have run): at every moment the record has an
owner, the park or the message. A send that fails leaves it parked for the next run (and the
job fails, for its alarm). Two runs at once may both send: the ledger answers the twin.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from crm_to_books.attempt import CONNECTION_BROKEN, SCOPE_MISSING
from crm_to_books.entities import get_entity
from crm_to_books.intake import Intake
from crm_to_books.ledger import Ledger
from crm_to_books.models import ImportRecord, ImportRequest
from crm_to_books.observability import logger
from crm_to_books.settings import Settings
from crm_to_books.tokens import ConnectionState, TokenProvider

STRANDED_AFTER_SECONDS = 86_400.0


class Redrive:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        tokens: TokenProvider,
        intake: Intake,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.tokens = tokens
        self.intake = intake
        self._clock = clock

    def run(self) -> int:
        sent, failures = 0, 0
        states = {
            name: self._state(name)
            for name in {org.connection for org in self.settings.organizations.values()}
        }
        for organization_id, org in self.settings.organizations.items():
            state = states[org.connection]

            def cause_gone(record: ImportRecord, state: ConnectionState | None = state) -> bool:
                return self._cause_gone(record, state)

            due = self.ledger.due(
                organization_id, early=cause_gone, stranded_after=STRANDED_AFTER_SECONDS
            )
            for record in [*due, *self.ledger.abandoned(organization_id)]:
                if record.kind not in self.settings.queue_urls:
                    logger.warning("no queue for a re-drive", extra={"kind": record.kind})
                    continue
                try:
                    self.intake.enqueue(
                        ImportRequest(
                            kind=record.kind,
                            organization_id=record.organization_id,
                            crm_id=record.crm_id,
                            source="redrive",
                        )
                    )
                except Exception:
                    failures += 1
                    logger.exception(
                        "re-drive could not enqueue an import",
                        extra={"kind": record.kind, "crm_id": record.crm_id},
                    )
                    continue  # still parked (or stranded): the next run tries again
                if record.parked:
                    self.ledger.unpark(record)  # the message owns it now
                sent += 1
        if failures:
            raise RuntimeError(
                f"{failures} re-driven import(s) could not be enqueued ({sent} were)"
            )
        return sent

    def _cause_gone(self, record: ImportRecord, state: ConnectionState | None) -> bool:
        if state is None or record.last_error is None:
            return False
        now = self._clock()
        category = record.last_error.category
        if category == CONNECTION_BROKEN:
            return state.usable(now)
        if category == SCOPE_MISSING:
            entity = get_entity(record.kind)
            return state.usable(now) and not any(
                state.missing(scope, now) for scope in (entity.scope, entity.read_scope)
            )
        return False

    def _state(self, connection: str) -> ConnectionState | None:
        try:
            return self.tokens.state(connection)
        except Exception:  # the state table unreadable: leave its parks to their own time
            logger.exception("connection state unreadable", extra={"connection": connection})
            return None
