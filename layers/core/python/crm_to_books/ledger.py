"""The import ledger: one record per (organization, kind, CRM id), and the only code that
writes it. The engine speaks to it in domain verbs (begin, complete, abandon, park); the
DynamoDB items, expressions and transactions stay in here.

`begin` takes a lease on the record: two concurrent attempts on one key can never both reach
Zoho's import, and a record that already succeeded answers from here. A lease that ran out
while `in_progress` means its holder died mid-call: the next attempt inherits the duty to look
the record up in Books, no sooner than `settle_seconds` after that lease ended (Zoho may still
be committing what the dead attempt sent).

Status changes are conditional writes; a permit of the rate limiter is released in the same
transaction as the record it was taken for. A transaction that conflicts with another writer
of the limiter item (or is throttled) is tried again here, with jitter: an import Zoho made is
never left unrecorded for that.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from botocore.exceptions import ClientError

from crm_to_books import dynamo
from crm_to_books.clients import LazyClient
from crm_to_books.errors import InvalidRequest
from crm_to_books.models import ImportError_, ImportRecord, ImportRequest, Status
from crm_to_books.topology import LEDGER_STATUS_INDEX

KEEP_CORRELATION_IDS = 10
BATCH_GET_KEYS = 100  # DynamoDB BatchGetItem's limit
WRITE_TRIES = 5  # a transaction lost to a conflict or a throttle is tried this often
MAX_PARKED_AT_ONCE = 100  # DynamoDB's most writes in one transaction
PARK_TRIES = 3  # `park`'s transaction lost to a conflict or a throttle: then each record alone
_RECORD_FIELDS = set(ImportRecord.model_fields)
_RETRYABLE = {
    "TransactionConflict",
    "TransactionConflictException",
    "ThrottlingError",
    "ThrottlingException",
    "ProvisionedThroughputExceeded",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "TransactionInProgressException",
    "InternalServerError",
}


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _key(organization_id: str, kind: str, crm_id: str) -> dict[str, str]:
    return {"pk": f"ORG#{organization_id}", "sk": f"{kind}#{crm_id}"}


def _identity(request: ImportRequest, status: Status, now: float) -> dict[str, Any]:
    org, kind, crm_id = request.key
    return {
        "organization_id": org,
        "kind": kind,
        "crm_id": crm_id,
        "status": status.value,
        "org_status": f"{org}#{status.value}",
        "updated_at": iso(now),
    }


def _arrival(
    request: ImportRequest, sets: dict[str, Any]
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """A write of a record a request may be creating (`begin`, `park`): `sets`, the record's
    creation time if it is new, the request's correlation id appended and its source added. The
    update expression, its names and its values."""
    expression = "SET " + ", ".join(f"#{k} = :{k}" for k in sets)
    expression += ", created_at = if_not_exists(created_at, :updated_at)"
    expression += ", correlation_ids = list_append(if_not_exists(correlation_ids, :none), :cid)"
    expression += " ADD sources :src"
    values = {f":{k}": v for k, v in sets.items()}
    values |= {
        ":none": [],
        ":cid": [request.correlation_id] if request.correlation_id else [],
        ":src": {request.source},
    }
    return expression, {f"#{k}": k for k in sets}, values


def to_record(item: dict[str, Any]) -> ImportRecord:
    data = {k: v for k, v in item.items() if k in _RECORD_FIELDS}
    data["sources"] = sorted(data.get("sources") or [])
    data["correlation_ids"] = list(data.get("correlation_ids") or [])[-KEEP_CORRELATION_IDS:]
    return ImportRecord.model_validate(data)


class PermitReleases(Protocol):
    """What the ledger needs from the rate limiter to release a permit with its record."""

    def release_update(self, permit: Any) -> dict[str, Any]: ...
    def released(self, permit: Any) -> None: ...
    def release(self, permit: Any) -> None: ...


@dataclass(slots=True)
class Claim:
    """This attempt holds the record's lease."""

    request: ImportRequest
    owner: str
    started: float  # when this attempt took the lease
    record: ImportRecord  # the record as this attempt found it (status in_progress)
    needs_lookup: bool  # an earlier attempt's outcome is unknown: look up before importing
    lookup_after: float  # ... and not before this time (Zoho may still be committing it)
    retries: int  # consecutive retries so far, for back-off
    attempts: int  # calls to Zoho's import so far
    _previous: dict[str, Any] = field(default_factory=dict, repr=False)  # for `abandon`
    _correlation_ids: list[str] = field(default_factory=list, repr=False)

    @property
    def is_new(self) -> bool:
        """No record existed before this attempt."""
        return not self._previous

    @property
    def previous(self) -> ImportRecord | None:
        return to_record(self._previous) if self._previous else None


@dataclass(frozen=True, slots=True)
class AlreadySucceeded:
    record: ImportRecord


@dataclass(frozen=True, slots=True)
class Busy:
    record: ImportRecord
    retry_after: float


@dataclass(slots=True)
class Completion:
    """How an attempt ends, as the ledger records it."""

    status: Status
    books_id: str | None = None
    error: ImportError_ | None = None
    detail: str | None = None
    next_attempt_at: float | None = None
    parked: bool = False
    needs_lookup: bool = False
    lookup_after: float | None = None
    zoho_calls: int = 0
    in_dlq: bool | None = None
    retries: int = 0


class Ledger:
    def __init__(
        self,
        table_name: str,
        client: Any = None,
        clock: Callable[[], float] = time.time,
        permits: PermitReleases | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._table = table_name
        self._client = client
        self._clock = clock
        self._permits = permits
        self._sleep = sleep

    client = LazyClient("dynamodb")

    # --- the attempt's own writes -----------------------------------------------------------
    def begin(
        self, request: ImportRequest, owner: str, lease_seconds: float, settle_seconds: float
    ) -> Claim | AlreadySucceeded | Busy:
        now = self._clock()
        org, kind, crm_id = request.key
        sets = {
            **_identity(request, Status.IN_PROGRESS, now),
            "lease_owner": owner,
            "lease_until": now + lease_seconds,
            "parked": False,
            "in_dlq": False,  # a new attempt: whatever dead-lettered it is behind it
        }
        expression, names, values = _arrival(request, sets)
        cid = values[":cid"]
        values |= {":succeeded": Status.SUCCEEDED.value, ":now": now}
        try:
            answer = self.client.update_item(
                TableName=self._table,
                Key=dynamo.dump(_key(org, kind, crm_id)),
                UpdateExpression=expression,
                ConditionExpression=(
                    "attribute_not_exists(pk) OR (#status <> :succeeded AND "
                    "(#status <> :status OR lease_until < :now))"
                ),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=dynamo.dump_values(values),
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise
            current = dynamo.old_item(exc) or {}
            record = to_record(current)
            if record.status is Status.SUCCEEDED:
                return AlreadySucceeded(record)
            return Busy(record, max(float(current.get("lease_until", now)) - now, 0.5))
        old = dynamo.load(answer.get("Attributes")) or {}
        correlation_ids = [*old.get("correlation_ids", []), *cid]
        if len(correlation_ids) > KEEP_CORRELATION_IDS:
            correlation_ids = correlation_ids[-KEEP_CORRELATION_IDS:]
            self._trim_correlation_ids(org, kind, crm_id, owner, correlation_ids)
        needs_lookup = bool(old.get("needs_lookup"))
        lookup_after = float(old.get("lookup_after") or 0)
        if old.get("status") == Status.IN_PROGRESS.value:
            # Its holder died mid-attempt: whatever it sent reached Zoho before its lease ended.
            needs_lookup = True
            lookup_after = max(lookup_after, float(old.get("lease_until", now)) + settle_seconds)
        item = {
            **_key(org, kind, crm_id),
            "attempts": 0,
            **old,
            **sets,
            "created_at": old.get("created_at", iso(now)),
            "correlation_ids": correlation_ids,
            "sources": set(old.get("sources") or set()) | {request.source},
            "needs_lookup": needs_lookup,
        }
        return Claim(
            request=request,
            owner=owner,
            started=now,
            record=to_record(item),
            needs_lookup=needs_lookup,
            lookup_after=lookup_after,
            retries=int(old.get("retries", 0)),
            attempts=int(old.get("attempts", 0)),
            _previous=old,
            _correlation_ids=correlation_ids,
        )

    def _trim_correlation_ids(
        self, org: str, kind: str, crm_id: str, owner: str, keep: list[str]
    ) -> None:
        """Under the lease nobody else appends: the newest ids replace the list."""
        try:
            self.client.update_item(
                TableName=self._table,
                Key=dynamo.dump(_key(org, kind, crm_id)),
                UpdateExpression="SET correlation_ids = :keep",
                ConditionExpression="lease_owner = :owner",
                ExpressionAttributeValues=dynamo.dump_values({":keep": keep, ":owner": owner}),
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise

    def complete(self, claim: Claim, done: Completion, permit: Any = None) -> ImportRecord:
        """Write the attempt's result and drop the lease; the permit's release rides in the
        same transaction. If the lease was lost meanwhile (the attempt outlived it), the record
        is left to its new holder, whose look-up-first path makes this harmless."""
        now = self._clock()
        org, kind, crm_id = claim.request.key
        sets: dict[str, Any] = {
            "status": done.status.value,
            "org_status": f"{org}#{done.status.value}",
            "updated_at": iso(now),
            "parked": done.parked,
            "needs_lookup": done.needs_lookup,
            "attempts": claim.attempts + done.zoho_calls,
            "correlation_ids": claim._correlation_ids[-KEEP_CORRELATION_IDS:],
            "retries": done.retries if done.status is Status.RETRYING else 0,
        }
        removes = ["lease_owner", "lease_until"]
        optional = {
            "books_id": done.books_id,
            "last_error": done.error.model_dump(exclude_none=True) if done.error else None,
            "detail": done.detail,
            "next_attempt_at": iso(done.next_attempt_at) if done.next_attempt_at else None,
            "next_attempt_epoch": done.next_attempt_at,
            "lookup_after": done.lookup_after if done.needs_lookup else None,
        }
        for name, value in optional.items():
            if value is not None:
                sets[name] = value
            elif name != "books_id" and not (
                name == "last_error" and done.status is not Status.SUCCEEDED
            ):
                removes.append(name)
        if done.in_dlq is not None:
            sets["in_dlq"] = done.in_dlq
        update = {
            "TableName": self._table,
            "Key": dynamo.dump(_key(org, kind, crm_id)),
            "UpdateExpression": "SET "
            + ", ".join(f"#{k} = :{k}" for k in sets)
            + " REMOVE "
            + ", ".join(f"#{k}" for k in removes),
            "ConditionExpression": "lease_owner = :owner",
            "ExpressionAttributeNames": {f"#{k}": k for k in [*sets, *removes]},
            "ExpressionAttributeValues": dynamo.dump_values(
                {**{f":{k}": v for k, v in sets.items()}, ":owner": claim.owner}
            ),
        }
        if not self._write_with_permit({"Update": update}, permit):
            current = self.get(org, kind, crm_id)
            if current is not None:
                return current
        item = {**claim._previous, **_key(org, kind, crm_id), **sets}
        item.update(
            organization_id=org,
            kind=kind,
            crm_id=crm_id,
            created_at=claim.record.created_at,
            sources=set(claim.record.sources),
        )
        for name in removes:
            item.pop(name, None)
        return to_record(item)

    def park(
        self,
        requests: Iterable[ImportRequest],
        done: Completion,
        unless: tuple[str, ...] = (),
    ) -> builtins.list[ImportRequest]:
        """Park queued imports the limiter says nobody may send before `done.next_attempt_at`
        (an organization parked, or out of calls for the day): one transaction of one
        conditional write each (`MAX_PARKED_AT_ONCE` at most, each record once), no lease, the
        re-drive job their owner. The imports parked; the others take their own attempt
        (`begin`). Refused, and tried again without it: a record `succeeded`; `in_progress`
        (its lease may have outlived its holder: only `begin` can tell which, and what it
        owes); owing a look-up (`needs_lookup`: its own attempt's record says so); parked for
        a cause in `unless` (its own attempt says what fixes it); or holding
        `2 * KEEP_CORRELATION_IDS` correlation ids (each park appends one; `begin` trims).
        Conflicts and throttles are tried again; `PARK_TRIES` transactions at most."""
        if done.status is not Status.RETRYING or not done.parked or not done.next_attempt_at:
            raise ValueError("park writes a parked retry with its time")
        now = self._clock()
        error = done.error.model_dump(exclude_none=True) if done.error else None
        pending: builtins.list[tuple[ImportRequest, dict[str, Any]]] = []
        for request in requests:
            sets = {
                **_identity(request, done.status, now),
                "parked": True,
                "in_dlq": False,
                "next_attempt_at": iso(done.next_attempt_at),
                "next_attempt_epoch": done.next_attempt_at,
                **({"last_error": error} if error else {}),
                **({"detail": done.detail} if done.detail else {}),
            }
            expression, names, values = _arrival(request, sets)
            causes = {f":unless{i}": c for i, c in enumerate(unless)}
            values |= causes | {
                ":succeeded": Status.SUCCEEDED.value,
                ":in_progress": Status.IN_PROGRESS.value,
                ":most": 2 * KEEP_CORRELATION_IDS,
                ":t": True,
            }
            condition = (
                "attribute_not_exists(pk) OR (#status <> :succeeded AND #status <> :in_progress "
                "AND (attribute_not_exists(needs_lookup) OR needs_lookup <> :t) "
                "AND (attribute_not_exists(correlation_ids) OR size(correlation_ids) < :most)"
            )
            if causes:
                condition += (
                    " AND (attribute_not_exists(#last_error.category) OR NOT "
                    f"#last_error.category IN ({', '.join(causes)}))"
                )
                names["#last_error"] = "last_error"
            update = {
                "TableName": self._table,
                "Key": dynamo.dump(_key(*request.key)),
                "UpdateExpression": expression,
                "ConditionExpression": condition + ")",
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": dynamo.dump_values(values),
            }
            pending.append((request, {"Update": update}))
        if not 0 < len(pending) <= MAX_PARKED_AT_ONCE or len({r.key for r, _ in pending}) < len(
            pending
        ):
            raise ValueError(f"park takes 1 to {MAX_PARKED_AT_ONCE} distinct records")
        for attempt in range(PARK_TRIES):
            try:
                self.client.transact_write_items(TransactItems=[w for _, w in pending])
                return [r for r, _ in pending]
            except ClientError as exc:
                reasons = dynamo.transaction_reasons(exc)
                refused = {
                    i for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed"
                }
                if refused:  # in the order of the writes: the others at once, without them
                    pending = [p for i, p in enumerate(pending) if i not in refused]
                    if not pending:
                        return []
                    continue
                if not _retryable(exc):
                    raise
            if attempt < PARK_TRIES - 1:
                self._sleep(random.uniform(0, 0.05 * 2**attempt))
        return []

    def abandon(self, claim: Claim, permit: Any = None) -> bool:
        """Undo `begin` when the attempt did nothing the record must remember (a synchronous
        caller told to retry later): the record goes back to what it was, or away if new."""
        org, kind, crm_id = claim.request.key
        mine = {
            "ConditionExpression": "lease_owner = :owner",
            "ExpressionAttributeValues": dynamo.dump_values({":owner": claim.owner}),
        }
        write: dict[str, Any]
        if claim._previous:
            write = {
                "Put": {"TableName": self._table, "Item": dynamo.dump(claim._previous), **mine}
            }
        else:
            key = dynamo.dump(_key(org, kind, crm_id))
            write = {"Delete": {"TableName": self._table, "Key": key, **mine}}
        return self._write_with_permit(write, permit)

    def _write_with_permit(self, write: dict[str, Any], permit: Any) -> bool:
        """One conditional write of the record, with the permit's release in the same
        transaction. False: the condition (our lease) failed, and the permit was released
        on its own. Conflicts and throttles are tried again; should they persist, the record
        is written alone and the permit released apart (a permit never released would only
        count as a finished call when its lease ends)."""
        also = [self._permits.release_update(permit)] if permit and self._permits else []
        for attempt in range(WRITE_TRIES):
            try:
                if also:
                    self.client.transact_write_items(TransactItems=[write, *also])
                else:
                    self._write_alone(write)
            except ClientError as exc:
                if _lost_condition(exc):
                    self._release_alone(permit)
                    return False
                if not _retryable(exc):
                    raise
                if attempt == WRITE_TRIES - 1 and also:
                    break
                if attempt == WRITE_TRIES - 1:
                    raise
                self._sleep(random.uniform(0, 0.05 * 2**attempt))
                continue
            if also and self._permits:
                self._permits.released(permit)
            return True
        try:
            self._write_alone(write)
        except ClientError as exc:
            if not _lost_condition(exc):
                raise
            self._release_alone(permit)
            return False
        self._release_alone(permit)
        return True

    def _write_alone(self, write: dict[str, Any]) -> None:
        ((verb, request),) = write.items()
        method = {"Update": "update_item", "Put": "put_item", "Delete": "delete_item"}[verb]
        getattr(self.client, method)(**request)

    def _release_alone(self, permit: Any) -> None:
        if permit and self._permits:
            try:
                self._permits.release(permit)
            except ClientError:
                pass  # its lease runs out and it counts as a call that finished then

    # --- other writers ----------------------------------------------------------------------
    def mark_queued(self, request: ImportRequest, seen: ImportRecord | None) -> ImportRecord | None:
        """An async request whose message was just sent: the record becomes `queued` (not
        parked: the message owns it now), if it is still as `seen` (None: absent). None when
        something wrote it meanwhile."""
        org, kind, crm_id = request.key
        if seen is None:
            condition, values = "attribute_not_exists(pk)", {}
        else:
            condition = "updated_at = :seen AND #status IN (:failed, :retrying, :s)"
            values = {
                ":seen": seen.updated_at,
                ":failed": Status.FAILED.value,
                ":retrying": Status.RETRYING.value,
            }
        try:
            answer = self._set_status(
                org,
                kind,
                crm_id,
                Status.QUEUED,
                request.source,
                condition=condition,
                more=", correlation_ids = list_append(if_not_exists(correlation_ids, :none), :cid)",
                values={
                    ":none": [],
                    ":cid": [request.correlation_id] if request.correlation_id else [],
                    **values,
                },
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise
            return None
        item = dynamo.load(answer["Attributes"]) or {}
        ids = list(item.get("correlation_ids") or [])
        if len(ids) > KEEP_CORRELATION_IDS:
            self._trim_appended(org, kind, crm_id, ids)
        return to_record(item)

    def _trim_appended(self, org: str, kind: str, crm_id: str, seen: list[str]) -> None:
        """Keep the newest ids of a list others may append to: only if it is still the list
        we saw (else the writer who changed it trims it)."""
        try:
            self.client.update_item(
                TableName=self._table,
                Key=dynamo.dump(_key(org, kind, crm_id)),
                UpdateExpression="SET correlation_ids = :keep",
                ConditionExpression="size(correlation_ids) = :n",
                ExpressionAttributeValues=dynamo.dump_values(
                    {":keep": seen[-KEEP_CORRELATION_IDS:], ":n": len(seen)}
                ),
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise

    def reject(
        self, organization_id: str, kind: str, crm_id: str, source: str, reason: str
    ) -> ImportRecord | None:
        """Record a poison request as failed, unless the key already has a live record."""
        error = ImportError_(message=reason, category="invalid")
        try:
            answer = self._set_status(
                organization_id,
                kind,
                crm_id,
                Status.FAILED,
                source,
                condition="attribute_not_exists(pk) OR #status = :s",
                more=", last_error = :e, detail = :d",
                values={
                    ":e": error.model_dump(exclude_none=True),
                    ":d": f"Rejected: {reason}. Nothing was sent to Zoho.",
                },
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise
            return None
        return to_record(dynamo.load(answer["Attributes"]) or {})

    def _set_status(
        self,
        organization_id: str,
        kind: str,
        crm_id: str,
        status: Status,
        source: str,
        condition: str,
        more: str,
        values: dict[str, Any],
        **options: Any,
    ) -> dict[str, Any]:
        """Create or move a record to `status` (not parked) outside an attempt, if `condition`
        holds, adding `source`; `more` and `values` set further attributes."""
        return dict(
            self.client.update_item(
                TableName=self._table,
                Key=dynamo.dump(_key(organization_id, kind, crm_id)),
                UpdateExpression=(
                    "SET organization_id = :o, kind = :k, crm_id = :c, #status = :s, "
                    "org_status = :os, updated_at = :now, "
                    "created_at = if_not_exists(created_at, :now), "
                    f"attempts = if_not_exists(attempts, :zero), parked = :f{more} "
                    "ADD sources :src"
                ),
                ConditionExpression=condition,
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=dynamo.dump_values(
                    {
                        ":o": organization_id,
                        ":k": kind,
                        ":c": crm_id,
                        ":s": status.value,
                        ":os": f"{organization_id}#{status.value}",
                        ":now": iso(self._clock()),
                        ":zero": 0,
                        ":f": False,
                        ":src": {source},
                        **values,
                    }
                ),
                ReturnValues="ALL_NEW",
                **options,
            )
        )

    def unpark(self, record: ImportRecord) -> bool:
        """A parked record whose message the re-drive job has just sent: the message owns it
        now. Only if it is still as `record` (the message may already have run)."""
        return self._update_retrying(
            (record.organization_id, record.kind, record.crm_id),
            "SET parked = :f, updated_at = :now",
            "parked = :t AND updated_at = :seen",
            {":f": False, ":t": True, ":seen": record.updated_at},
        )

    def reschedule(self, request: ImportRequest, at: float, detail: str) -> bool:
        """A `retrying` record whose message came back and was sent again to wait for its
        turn (its organization at its limit, no lease taken): the record says the new time,
        which that message keeps, instead of the earlier one, now past. Only if it still says
        an earlier time (another attempt may have written since); the message owns it, so it
        is neither parked nor in the dead-letter queue. False if the record is not such."""
        return self._update_retrying(
            request.key,
            "SET next_attempt_at = :at, next_attempt_epoch = :epoch, detail = :detail, "
            "parked = :f, in_dlq = :f, updated_at = :now",
            "next_attempt_epoch < :epoch",
            {":at": iso(at), ":epoch": at, ":detail": detail, ":f": False},
        )

    def _update_retrying(
        self, key: tuple[str, str, str], update: str, condition: str, values: dict[str, Any]
    ) -> bool:
        """One update of a `retrying` record, if `condition` holds too. False if not."""
        try:
            self.client.update_item(
                TableName=self._table,
                Key=dynamo.dump(_key(*key)),
                UpdateExpression=update,
                ConditionExpression=f"#status = :retrying AND {condition}",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=dynamo.dump_values(
                    {
                        **values,
                        ":retrying": Status.RETRYING.value,
                        ":now": iso(self._clock()),
                    }
                ),
            )
        except ClientError as exc:
            if dynamo.condition_failed(exc):
                return False
            raise
        return True

    # --- reads ------------------------------------------------------------------------------
    def get(self, organization_id: str, kind: str, crm_id: str) -> ImportRecord | None:
        answer = self.client.get_item(
            TableName=self._table,
            Key=dynamo.dump(_key(organization_id, kind, crm_id)),
            ConsistentRead=True,
        )
        item = dynamo.load(answer.get("Item"))
        return to_record(item) if item else None

    def succeeded(
        self, organization_id: str, kind: str, crm_ids: Iterable[str]
    ) -> builtins.set[str]:
        """Which of `crm_ids` the ledger has as `succeeded` (`succeeded_among`)."""
        return succeeded_among(
            self.client, self._table, organization_id, kind, crm_ids, self._sleep
        )

    def list(
        self,
        organization_id: str,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[builtins.list[ImportRecord], str | None]:
        query: dict[str, Any] = {"TableName": self._table, "Limit": max(1, min(limit, 500))}
        values: dict[str, Any] = {}
        if status:
            query["IndexName"] = LEDGER_STATUS_INDEX
            query["KeyConditionExpression"] = "org_status = :os"
            query["ScanIndexForward"] = False
            values[":os"] = f"{organization_id}#{status}"
            if kind:
                query["FilterExpression"] = "kind = :k"
                values[":k"] = kind
        else:
            query["KeyConditionExpression"] = "pk = :pk"
            values[":pk"] = f"ORG#{organization_id}"
            if kind:
                query["KeyConditionExpression"] += " AND begins_with(sk, :k)"
                values[":k"] = f"{kind}#"
        query["ExpressionAttributeValues"] = dynamo.dump_values(values)
        if cursor:
            # A cursor continues this query only: same organization (and status), string keys.
            bound = (
                {"org_status": f"{organization_id}#{status}"}
                if status
                else {"pk": f"ORG#{organization_id}"}
            )
            query["ExclusiveStartKey"] = _decode_cursor(cursor, bound)
        answer = self.client.query(**query)
        records = [to_record(dynamo.load(i) or {}) for i in answer.get("Items", [])]
        last = answer.get("LastEvaluatedKey")
        return records, _encode_cursor(last) if last else None

    def due(
        self,
        organization_id: str,
        early: Callable[[ImportRecord], bool] | None = None,
        stranded_after: float | None = None,
    ) -> builtins.list[ImportRecord]:
        """Parked records whose time has come, and those `early` says may go now whatever
        their time (their cause is known to be gone). With `stranded_after`: also unparked
        `retrying` records (not dead-lettered) whose next attempt is that many seconds overdue,
        and `queued` records that old: whatever message held them is gone."""
        now = self._clock()
        condition = "parked = :t"
        values: dict[str, Any] = {":t": True}
        if stranded_after is not None:
            condition = (
                f"({condition}) OR (parked = :f AND (attribute_not_exists(in_dlq) OR in_dlq = :f)"
                " AND next_attempt_epoch < :stranded)"
            )
            values |= {":f": False, ":stranded": now - stranded_after}
        waiting = self._query_index(organization_id, Status.RETRYING, condition, values)
        out = [
            r
            for r in waiting
            if not r.parked or epoch(r.next_attempt_at) <= now or (early is not None and early(r))
        ]
        if stranded_after is not None:
            out += self._query_index(
                organization_id,
                Status.QUEUED,
                None,
                {":before": iso(now - stranded_after)},
                sort_condition="updated_at < :before",
            )
        return out

    def abandoned(self, organization_id: str, grace: float = 60.0) -> builtins.list[ImportRecord]:
        """`in_progress` records whose attempt died (its lease ran out `grace` seconds ago) and
        that nobody will retry by themselves, e.g. a synchronous call whose function timed out."""
        return self._query_index(
            organization_id,
            Status.IN_PROGRESS,
            "lease_until < :then",
            {":then": self._clock() - grace},
        )

    def _query_index(
        self,
        organization_id: str,
        status: Status,
        condition: str | None,
        values: dict[str, Any],
        sort_condition: str | None = None,
    ) -> builtins.list[ImportRecord]:
        out: builtins.list[ImportRecord] = []
        key = "org_status = :os" + (f" AND {sort_condition}" if sort_condition else "")
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": LEDGER_STATUS_INDEX,
            "KeyConditionExpression": key,
            "ExpressionAttributeValues": dynamo.dump_values(
                {":os": f"{organization_id}#{status.value}", **values}
            ),
        }
        if condition:
            query["FilterExpression"] = condition
        while True:
            answer = self.client.query(**query)
            out.extend(to_record(dynamo.load(i) or {}) for i in answer.get("Items", []))
            if not answer.get("LastEvaluatedKey"):
                return out
            query["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


def epoch(value: str | None) -> float:
    if not value:
        return 0.0
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _lost_condition(exc: ClientError) -> bool:
    if dynamo.condition_failed(exc):
        return True
    reasons = dynamo.transaction_reasons(exc)
    return bool(reasons) and reasons[0].get("Code") == "ConditionalCheckFailed"


def _retryable(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code in _RETRYABLE:
        return True
    return any(r.get("Code") in _RETRYABLE for r in dynamo.transaction_reasons(exc))


def _encode_cursor(key: dict[str, Any]) -> str:
    raw = json.dumps(key, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, bound: dict[str, str]) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidRequest("cursor", "is not a cursor this API returned") from None
    if (
        not isinstance(key, dict)
        or not all(
            isinstance(v, dict) and set(v) == {"S"} and isinstance(v["S"], str)
            for v in key.values()
        )
        or any(key.get(name, {}).get("S") != value for name, value in bound.items())
    ):
        raise InvalidRequest("cursor", "is not a cursor this API returned")
    return key


def succeeded_among(
    client: Any,
    table: str,
    organization_id: str,
    kind: str,
    crm_ids: Iterable[str],
    sleep: Callable[[float], None] = time.sleep,
) -> set[str]:
    """Which of `crm_ids` the ledger has as `succeeded`: batched reads (100 keys a call),
    eventually consistent (a record that succeeded a moment ago may be missed: queued again,
    the ledger answers it without calling Zoho). Apart from `Ledger`'s own methods, so only the
    functions that read this way are granted `dynamodb:BatchGetItem`."""
    ids = list(dict.fromkeys(crm_ids))
    found: set[str] = set()
    for start in range(0, len(ids), BATCH_GET_KEYS):
        keys = [
            dynamo.dump(_key(organization_id, kind, crm_id))
            for crm_id in ids[start : start + BATCH_GET_KEYS]
        ]
        request: dict[str, Any] = {
            table: {
                "Keys": keys,
                "ProjectionExpression": "crm_id, #status",
                "ExpressionAttributeNames": {"#status": "status"},
            }
        }
        for attempt in range(WRITE_TRIES * 2):
            answer = client.batch_get_item(RequestItems=request)
            for item in answer.get("Responses", {}).get(table, []):
                record = dynamo.load(item) or {}
                if record.get("status") == Status.SUCCEEDED.value:
                    found.add(str(record.get("crm_id")))
            request = answer.get("UnprocessedKeys") or {}
            if not request:
                break
            sleep(random.uniform(0, 0.05 * 2 ** min(attempt, 5)))
        else:
            raise RuntimeError("DynamoDB left keys of a batched read unprocessed")
    return found
