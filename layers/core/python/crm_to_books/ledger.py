"""The import ledger: one DynamoDB record per (organization, kind, CRM id).

Status changes are conditional writes. `begin` takes a lease on the record: two concurrent
attempts on one key can never both reach Zoho's import, and a record that already succeeded
answers from here. A lease that expires while `in_progress` means its holder died mid-call:
the next attempt must look the record up in Books before importing again.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from crm_to_books import dynamo
from crm_to_books.errors import InvalidRequest
from crm_to_books.models import ImportError_, ImportRecord, ImportRequest, Status
from crm_to_books.topology import LEDGER_STATUS_INDEX

KEEP_CORRELATION_IDS = 10
_RECORD_FIELDS = set(ImportRecord.model_fields)


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _key(organization_id: str, kind: str, crm_id: str) -> dict[str, str]:
    return {"pk": f"ORG#{organization_id}", "sk": f"{kind}#{crm_id}"}


def to_record(item: dict[str, Any]) -> ImportRecord:
    data = {k: v for k, v in item.items() if k in _RECORD_FIELDS}
    data["sources"] = sorted(data.get("sources") or [])
    return ImportRecord.model_validate(data)


@dataclass(slots=True)
class Claim:
    """This attempt holds the record's lease."""

    request: ImportRequest
    owner: str
    item: dict[str, Any]  # the record as this attempt believes it is
    needs_lookup: bool  # an earlier attempt's outcome is unknown: look up before importing
    previous: dict[str, Any] = field(default_factory=dict)  # the record before this attempt

    @property
    def record(self) -> ImportRecord:
        return to_record(self.item)


@dataclass(frozen=True, slots=True)
class AlreadySucceeded:
    record: ImportRecord


@dataclass(frozen=True, slots=True)
class Busy:
    record: ImportRecord
    retry_after: float


@dataclass(slots=True)
class Completion:
    status: Status
    books_id: str | None = None
    error: ImportError_ | None = None
    detail: str | None = None
    next_attempt_at: float | None = None
    parked: bool = False
    needs_lookup: bool = False
    zoho_calls: int = 0
    in_dlq: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Ledger:
    def __init__(
        self,
        table_name: str,
        client: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = table_name
        self._client = client
        self._clock = clock

    @property
    def client(self) -> Any:
        if self._client is None:
            from crm_to_books import aws

            self._client = aws.client("dynamodb")
        return self._client

    # --- the import's own writes -----------------------------------------------------------
    def begin(
        self, request: ImportRequest, owner: str, lease_seconds: float
    ) -> Claim | AlreadySucceeded | Busy:
        now = self._clock()
        org, kind, crm_id = request.key
        sets = {
            "organization_id": org,
            "kind": kind,
            "crm_id": crm_id,
            "status": Status.IN_PROGRESS.value,
            "org_status": f"{org}#{Status.IN_PROGRESS.value}",
            "lease_owner": owner,
            "lease_until": now + lease_seconds,
            "updated_at": iso(now),
            "parked": False,
            "in_dlq": False,  # a new attempt: whatever dead-lettered it is behind it
        }
        names = {f"#{k}": k for k in sets}
        values = {f":{k}": v for k, v in sets.items()}
        expression = "SET " + ", ".join(f"#{k} = :{k}" for k in sets)
        expression += ", created_at = if_not_exists(created_at, :updated_at)"
        expression += ", correlation_ids = list_append(if_not_exists(correlation_ids, :none), :cid)"
        expression += " ADD sources :src"
        cid = [request.correlation_id] if request.correlation_id else []
        values |= {
            ":none": [],
            ":cid": cid,
            ":src": {request.source},
            ":succeeded": Status.SUCCEEDED.value,
            ":now": now,
        }
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
        taken_over = old.get("status") == Status.IN_PROGRESS.value
        item = {
            **_key(org, kind, crm_id),
            "attempts": 0,
            **old,
            **sets,
            "created_at": old.get("created_at", iso(now)),
            "correlation_ids": [*old.get("correlation_ids", []), *cid],
            "sources": set(old.get("sources") or set()) | {request.source},
        }
        return Claim(
            request,
            owner,
            item,
            needs_lookup=taken_over or bool(old.get("needs_lookup")),
            previous=old,
        )

    def complete(
        self, claim: Claim, done: Completion, also: list[dict[str, Any]] | None = None
    ) -> ImportRecord:
        """Write the attempt's result and drop the lease; `also` rides in the same transaction."""
        now = self._clock()
        org, kind, crm_id = claim.request.key
        sets: dict[str, Any] = {
            "status": done.status.value,
            "org_status": f"{org}#{done.status.value}",
            "updated_at": iso(now),
            "parked": done.parked,
            "needs_lookup": done.needs_lookup,
            "attempts": int(claim.item.get("attempts", 0)) + done.zoho_calls,
            "correlation_ids": claim.item.get("correlation_ids", [])[-KEEP_CORRELATION_IDS:],
            **done.extra,
        }
        removes = ["lease_owner", "lease_until"]
        optional = {
            "books_id": done.books_id,
            "last_error": done.error.model_dump(exclude_none=True) if done.error else None,
            "detail": done.detail,
            "next_attempt_at": iso(done.next_attempt_at) if done.next_attempt_at else None,
            "next_attempt_epoch": done.next_attempt_at,
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
        try:
            if also:
                self.client.transact_write_items(TransactItems=[{"Update": update}, *also])
            else:
                self.client.update_item(**update)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in {"ConditionalCheckFailedException", "TransactionCanceledException"}:
                raise
            reasons = dynamo.transaction_reasons(exc)
            if reasons and reasons[0].get("Code") != "ConditionalCheckFailed":
                raise
            # The lease was lost (this attempt outlived it): another attempt owns the record now.
            # Its own look-up-first path makes this harmless; still release what rides along.
            for item in also or []:
                upd = dict(item["Update"])
                self.client.update_item(**upd)
            current = self.get(org, kind, crm_id)
            if current is not None:
                return current
        item = {**claim.item, **sets}
        for name in removes:
            item.pop(name, None)
        claim.item = item
        return to_record(item)

    def abandon(self, claim: Claim, also: list[dict[str, Any]] | None = None) -> bool:
        """Undo `begin` when the attempt did nothing the record must remember (a synchronous
        caller told to retry later): the record goes back to what it was, or away if new."""
        org, kind, crm_id = claim.request.key
        key = dynamo.dump(_key(org, kind, crm_id))
        mine = {
            "ConditionExpression": "lease_owner = :owner",
            "ExpressionAttributeValues": dynamo.dump_values({":owner": claim.owner}),
        }
        write: dict[str, Any]
        if claim.previous:
            write = {"Put": {"TableName": self._table, "Item": dynamo.dump(claim.previous), **mine}}
        else:
            write = {"Delete": {"TableName": self._table, "Key": key, **mine}}
        try:
            if also:
                self.client.transact_write_items(TransactItems=[write, *also])
            elif claim.previous:
                self.client.put_item(**write["Put"])
            else:
                self.client.delete_item(**write["Delete"])
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in {"ConditionalCheckFailedException", "TransactionCanceledException"}:
                raise
            for item in also or []:
                self.client.update_item(**item["Update"])
            return False
        return True

    # --- other writers ----------------------------------------------------------------------
    def mark_queued(self, request: ImportRequest) -> tuple[ImportRecord, bool]:
        """Accept an async request: `queued` unless it succeeded or is being imported now.
        Returns the record and whether the caller should enqueue it."""
        org, kind, crm_id = request.key
        try:
            answer = self._set_status(
                org,
                kind,
                crm_id,
                Status.QUEUED,
                request.source,
                condition="attribute_not_exists(pk) OR #status IN (:failed, :retrying, :s)",
                more=", correlation_ids = list_append(if_not_exists(correlation_ids, :none), :cid)",
                values={
                    ":none": [],
                    ":cid": [request.correlation_id] if request.correlation_id else [],
                    ":failed": Status.FAILED.value,
                    ":retrying": Status.RETRYING.value,
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not dynamo.condition_failed(exc):
                raise
            return to_record(dynamo.old_item(exc) or {}), False
        return to_record(dynamo.load(answer["Attributes"]) or {}), True

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

    def unpark(self, record: ImportRecord) -> str | None:
        """Take a parked record for re-enqueueing: the `updated_at` it wrote, or None if someone
        else took it first (or an import finished it meanwhile)."""
        now = iso(self._clock())
        return now if self._set_parked(record, False, "parked = :t", {":t": True}, now) else None

    def repark(self, record: ImportRecord, taken: str) -> bool:
        """Give back a record `unpark` took (`taken`: what it returned) whose message could not
        be sent, so the next re-drive run finds it again, unless anything wrote it since."""
        condition = "parked = :f AND updated_at = :taken"
        return self._set_parked(record, True, condition, {":f": False, ":taken": taken})

    def _set_parked(
        self,
        record: ImportRecord,
        parked: bool,
        condition: str,
        values: dict[str, Any],
        now: str | None = None,
    ) -> bool:
        try:
            self.client.update_item(
                TableName=self._table,
                Key=dynamo.dump(_key(record.organization_id, record.kind, record.crm_id)),
                UpdateExpression="SET parked = :to, updated_at = :now",
                # Only a record still waiting: one an import has since finished stays as it is.
                ConditionExpression=f"{condition} AND #status = :retrying",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=dynamo.dump_values(
                    {
                        **values,
                        ":to": parked,
                        ":retrying": Status.RETRYING.value,
                        ":now": now or iso(self._clock()),
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
        early_categories: Iterable[str] = (),
        stranded_after: float | None = None,
    ) -> builtins.list[ImportRecord]:
        """Parked records whose time has come, and those parked for an error category in
        `early_categories` whatever their time (the cause is known to be gone). With
        `stranded_after`: also unparked `retrying` records (not dead-lettered) whose next attempt
        is that many seconds overdue: whatever message held them is gone."""
        when = "next_attempt_epoch <= :now"
        values: dict[str, Any] = {":t": True, ":now": self._clock()}
        early = sorted(set(early_categories))
        if early:
            names = ", ".join(f":c{i}" for i in range(len(early)))
            when = f"({when} OR last_error.category IN ({names}))"
            values |= {f":c{i}": category for i, category in enumerate(early)}
        condition = f"parked = :t AND {when}"
        if stranded_after is not None:
            condition = (
                f"({condition}) OR (parked = :f AND (attribute_not_exists(in_dlq) OR in_dlq = :f)"
                " AND next_attempt_epoch < :stranded)"
            )
            values |= {":f": False, ":stranded": self._clock() - stranded_after}
        return self._query_index(organization_id, Status.RETRYING, condition, values)

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
        self, organization_id: str, status: Status, condition: str, values: dict[str, Any]
    ) -> builtins.list[ImportRecord]:
        out: builtins.list[ImportRecord] = []
        query: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": LEDGER_STATUS_INDEX,
            "KeyConditionExpression": "org_status = :os",
            "FilterExpression": condition,
            "ExpressionAttributeValues": dynamo.dump_values(
                {":os": f"{organization_id}#{status.value}", **values}
            ),
        }
        while True:
            answer = self.client.query(**query)
            out.extend(to_record(dynamo.load(i) or {}) for i in answer.get("Items", []))
            if not answer.get("LastEvaluatedKey"):
                return out
            query["ExclusiveStartKey"] = answer["LastEvaluatedKey"]


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
