"""What the triggers need from the import engine (`pipeline.Importer`), as protocols.

The HTTP API, the SQS batch and the scheduled jobs depend on this shape only, so tests pass
fakes and the engine stays free to change everything behind it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from crm_to_books.limiter import Reservation
from crm_to_books.models import ImportError_, ImportRecord, ImportRequest
from crm_to_books.settings import Settings


class OutcomeLike(Protocol):
    """`pipeline.ImportOutcome`: how one import attempt ended."""

    @property
    def request(self) -> ImportRequest: ...
    @property
    def record(self) -> ImportRecord | None: ...  # None: neither read nor written
    @property
    def result(self) -> str: ...  # imported, already_imported, failed, retry_later, in_progress
    @property
    def retry_after(self) -> float | None: ...
    @property
    def zoho_data(self) -> Mapping[str, Any] | None: ...
    @property
    def error(self) -> ImportError_ | None: ...
    @property
    def rate_limited(self) -> bool: ...
    @property
    def parked(self) -> bool: ...  # the ledger (re-drive job) holds it, not a queue message
    @property
    def recorded(self) -> bool: ...  # False: nothing of this attempt is in the ledger
    @property
    def queued(self) -> bool: ...  # the engine queued a message that holds the import now
    @property
    def deferred(self) -> bool: ...  # a wait of the service's own, not a failure


class Holder(Protocol):
    """What holds a retry of an import: the SQS message it came in (`batch.MessageHolder`)."""

    @property
    def fallback_seconds(self) -> float: ...  # when it comes back if `hold` fails

    @property
    def keeps_a_time(self) -> bool: ...  # its record may say a time this message was to keep

    def hold(
        self,
        seconds: float,
        fresh: bool,
        reservation: Reservation | None = None,
        *,
        keeps_a_time: bool = False,
        later: bool = False,
    ) -> bool:
        """Bring the import back in `seconds`; `fresh`: as a new message (a wait, not a
        failure: no receive spent), carrying `reservation` (the rate slot held for it) and,
        with `keeps_a_time`, a mark that its record says when it comes back. `later`: nothing
        is written that the copy must precede, so it may be sent with others before the
        handler answers (a copy that then cannot be sent leaves its message undeleted). False
        if it could not be arranged."""
        ...


class LedgerLike(Protocol):
    def get(self, organization_id: str, kind: str, crm_id: str) -> ImportRecord | None: ...

    def list(
        self,
        organization_id: str,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[ImportRecord], str | None]: ...


class ImporterLike(Protocol):
    @property
    def settings(self) -> Settings: ...
    @property
    def ledger(self) -> LedgerLike: ...

    def run(
        self,
        request: ImportRequest,
        *,
        last_delivery: bool = False,
        sync: bool = False,
        holder: Holder | None = None,
        reservation: Reservation | None = None,
    ) -> OutcomeLike: ...
    def park_known(self, requests: Sequence[ImportRequest]) -> Sequence[OutcomeLike]: ...
    def accept(self, request: ImportRequest) -> ImportRecord: ...
    def enqueue(self, request: ImportRequest, delay_seconds: float = 0) -> object: ...
    def reject(
        self, kind: str, organization_id: str, crm_id: str, source: str, reason: str
    ) -> object: ...
    def redrive_due(self) -> int: ...
    def keep_tokens_fresh(self) -> Sequence[Mapping[str, Any]]: ...


class HooksLike(Protocol):
    """`hooks.CrmHooks`: a Zoho CRM notification, verified and queued."""

    def receive(
        self, body: str | bytes | None, correlation_id: str | None = None
    ) -> dict[str, Any]: ...
