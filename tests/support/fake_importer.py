"""In-memory stand-ins for `pipeline.Importer` (same shape: `ports.ImporterLike`) and SQS.

Outcomes are scripted per CRM id; every call is counted, so tests can assert that a refused
request reached nothing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from botocore.exceptions import ClientError

from crm_to_books.entities import get_entity
from crm_to_books.errors import InvalidRequest
from crm_to_books.limiter import Reservation
from crm_to_books.models import ImportError_, ImportRecord, ImportRequest, Status
from crm_to_books.settings import Organization, Settings

ORG = "700100200"
NOW = "2025-01-01T12:00:00Z"
ENDPOINT = "https://sqs.eu-west-1.amazonaws.com"


def make_settings(**changes: Any) -> Settings:
    values: dict[str, Any] = {
        "ledger_table": "crm-to-books-ledger",
        "state_table": "crm-to-books-state",
        "organizations": {ORG: Organization()},
        "connections": {"default": "crm-to-books/connections/default"},
        "queue_urls": {
            k: f"https://sqs.eu-west-1.amazonaws.com/123456789012/crm-to-books-{k}-imports"
            for k in ("account", "contact", "vendor", "item")
        },
        "import_kind": "account",
    }
    return Settings(**{**values, **changes})


def books_id(crm_id: str) -> str:
    return "46" + crm_id[-12:].rjust(12, "0")


@dataclass
class FakeOutcome:
    request: ImportRequest
    record: ImportRecord
    result: str
    retry_after: float | None = None
    zoho_data: dict[str, Any] | None = None
    error: ImportError_ | None = None
    rate_limited: bool = False
    parked: bool = False
    recorded: bool = True
    queued: bool = False
    deferred: bool = False


@dataclass
class Script:
    result: str = "imported"
    retry_after: float | None = None
    rate_limited: bool = False
    parked: bool = False
    error: ImportError_ | None = None
    recorded: bool | None = None  # None: as the engine, not when rate-limited
    reservation: Reservation | None = None  # the rate slot held for the retry
    parked_together: bool = False  # `park_known` parks it, before its own attempt
    later: bool = False  # its delayed copy may go with the lane's others (a turn, before a lease)


class FakeLedger:
    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.records: dict[tuple[str, str, str], ImportRecord] = {}
        self._calls = calls

    def put(self, record: ImportRecord) -> ImportRecord:
        self.records[(record.organization_id, record.kind, record.crm_id)] = record
        return record

    def get(self, organization_id: str, kind: str, crm_id: str) -> ImportRecord | None:
        self._calls.append(("ledger.get", (organization_id, kind, crm_id)))
        return self.records.get((organization_id, kind, crm_id))

    def list(
        self,
        organization_id: str,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[ImportRecord], str | None]:
        self._calls.append(("ledger.list", (organization_id, status, kind, limit, cursor)))
        after = _decode(cursor) if cursor else None
        keys = sorted(
            k
            for k, r in self.records.items()
            if k[0] == organization_id
            and (status is None or r.status == status)
            and (kind is None or r.kind == kind)
            and (after is None or list(k) > after)
        )
        page = keys[:limit]
        more = len(keys) > limit
        next_cursor = base64.urlsafe_b64encode(json.dumps(page[-1]).encode()).decode()
        return [self.records[k] for k in page], next_cursor if more else None


def _decode(cursor: str) -> list[str]:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except ValueError:
        raise InvalidRequest("cursor", "is not a cursor this API returned") from None
    if not isinstance(value, list):
        raise InvalidRequest("cursor", "is not a cursor this API returned")
    return [str(v) for v in value]


class FakeImporter:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or make_settings()
        self.calls: list[tuple[str, Any]] = []
        self.ledger = FakeLedger(self.calls)
        self.scripts: dict[str, Script] = {}
        self.redrive_count = 0
        self.token_results: list[dict[str, str]] = []
        self.reservations: list[Reservation | None] = []  # what each run was given
        self.park_asks: list[list[str]] = []  # the CRM ids each `park_known` was asked about

    def script(self, crm_id: str, **how: Any) -> None:
        self.scripts[crm_id] = Script(**how)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    # --- ImporterLike -----------------------------------------------------------------------
    def park_known(self, requests: Sequence[ImportRequest]) -> list[FakeOutcome]:
        self.park_asks.append([r.crm_id for r in requests])
        parked = [r for r in requests if self.scripts.get(r.crm_id, Script()).parked_together]
        return [
            FakeOutcome(
                r, self._record(r, Status.RETRYING, parked=True), "retry_later", parked=True
            )
            for r in parked
        ]

    def run(
        self,
        request: ImportRequest,
        *,
        last_delivery: bool = False,
        sync: bool = False,
        holder: Any = None,
        reservation: Reservation | None = None,
    ) -> FakeOutcome:
        self.calls.append(("run", (request, last_delivery)))
        self.reservations.append(reservation)
        self.settings.organization(request.organization_id)
        entity = get_entity(request.kind)
        existing = self.ledger.records.get(request.key)
        if existing and existing.status == Status.SUCCEEDED:
            data = {entity.books_id_key: existing.books_id}
            return FakeOutcome(request, existing, "already_imported", zoho_data=data)
        how = self.scripts.get(request.crm_id, Script())
        if how.result == "imported":
            record = self._record(request, Status.SUCCEEDED, books_id=books_id(request.crm_id))
            data = {entity.books_id_key: record.books_id, "zcrm_id": request.crm_id}
            return FakeOutcome(request, record, "imported", zoho_data=data)
        status = Status.FAILED if how.result == "failed" else Status.RETRYING
        record = self._record(request, status, last_error=how.error, parked=how.parked)
        # Like the engine: a synchronous caller's kept import is held by a message it queues.
        recorded = not how.rate_limited if how.recorded is None else how.recorded
        queued = sync and how.result == "retry_later" and recorded and not how.parked
        if queued:
            self.enqueue(request, how.retry_after or 0)
        elif holder is not None and how.result == "retry_later" and not how.parked:
            # as the engine does
            holder.hold(
                how.retry_after or 60,
                fresh=how.rate_limited,
                reservation=how.reservation,
                later=how.later,
            )
        return FakeOutcome(
            request,
            record,
            how.result,
            retry_after=how.retry_after,
            error=how.error,
            rate_limited=how.rate_limited,
            parked=how.parked,
            recorded=recorded,
            queued=queued,
        )

    def accept(self, request: ImportRequest) -> ImportRecord:
        self.calls.append(("accept", request))
        self.settings.organization(request.organization_id)
        existing = self.ledger.records.get(request.key)
        if existing and existing.status == Status.SUCCEEDED:
            return existing
        self.enqueue(request)
        return self._record(request, Status.QUEUED)

    def enqueue(self, request: ImportRequest, delay_seconds: float = 0) -> None:
        self.calls.append(("enqueue", (request, delay_seconds)))

    def reject(
        self, kind: str, organization_id: str, crm_id: str, source: str, reason: str
    ) -> ImportRecord | None:
        self.calls.append(("reject", (kind, organization_id, crm_id, source, reason)))
        existing = self.ledger.records.get((organization_id, kind, crm_id))
        if existing and existing.status != Status.FAILED:
            return None
        error = ImportError_(message=reason, category="invalid")
        return self.ledger.put(
            ImportRecord(
                organization_id=organization_id,
                kind=kind,
                crm_id=crm_id,
                status=Status.FAILED,
                created_at=NOW,
                updated_at=NOW,
                sources=[source],
                last_error=error,
            )
        )

    def redrive_due(self) -> int:
        self.calls.append(("redrive_due", None))
        return self.redrive_count

    def keep_tokens_fresh(self) -> list[dict[str, str]]:
        self.calls.append(("keep_tokens_fresh", None))
        return self.token_results

    def _record(self, request: ImportRequest, status: Status, **fields: Any) -> ImportRecord:
        old = self.ledger.records.get(request.key)
        return self.ledger.put(
            ImportRecord(
                organization_id=request.organization_id,
                kind=request.kind,
                crm_id=request.crm_id,
                status=status,
                attempts=(old.attempts if old else 0) + (status != Status.QUEUED),
                created_at=old.created_at if old else NOW,
                updated_at=NOW,
                sources=sorted({*(old.sources if old else []), request.source}),
                correlation_ids=[request.correlation_id] if request.correlation_id else [],
                **fields,
            )
        )


class FakeSqs:
    """`fail`: every call fails. `fail_batches`: SendMessageBatch fails as a call. `refuse`:
    message bodies SendMessageBatch reports failed (SQS's per-entry `Failed`), sent alone;
    `unsendable`: bodies no send takes."""

    def __init__(
        self,
        fail: bool = False,
        fail_batches: bool = False,
        refuse: Sequence[str] = (),
        unsendable: Sequence[str] = (),
    ) -> None:
        self.meta = SimpleNamespace(endpoint_url=ENDPOINT)
        self.visibility: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []  # every copy that reached the queue, as sent alone
        self.batches: list[int] = []  # SendMessageBatch calls that took entries: how many
        self._fail = fail
        self._fail_batches = fail_batches
        self._unsendable = set(unsendable)  # bodies no send takes, in a batch or alone
        self._refuse = set(refuse) | self._unsendable

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        assert 1 <= len(Entries) <= 10 and len({e["Id"] for e in Entries}) == len(Entries)
        if self._fail or self._fail_batches:
            raise ClientError(
                {"Error": {"Code": "AWS.SimpleQueueService.NonExistentQueue", "Message": "gone"}},
                "SendMessageBatch",
            )
        taken = [e for e in Entries if e["MessageBody"] not in self._refuse]
        for entry in taken:
            self.sent.append(
                {"QueueUrl": QueueUrl, **{k: v for k, v in entry.items() if k != "Id"}}
            )
        self.batches.append(len(taken))
        failed = [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError"}
            for e in Entries
            if e["MessageBody"] in self._refuse
        ]
        return {"Successful": [{"Id": e["Id"]} for e in taken], "Failed": failed}

    def send_message(self, **params: Any) -> dict[str, str]:
        if self._fail or params.get("MessageBody") in self._unsendable:
            raise ClientError(
                {"Error": {"Code": "AWS.SimpleQueueService.NonExistentQueue", "Message": "gone"}},
                "SendMessage",
            )
        self.sent.append(params)
        return {"MessageId": f"copy-{len(self.sent)}"}

    def change_message_visibility(self, **params: Any) -> None:
        if self._fail:
            raise ClientError(
                {"Error": {"Code": "ReceiptHandleIsInvalid", "Message": "gone"}},
                "ChangeMessageVisibility",
            )
        self.visibility.append(params)
