"""A CRM sweep: list one kind's CRM module by `Modified_Time` from the checkpoint on, and queue
an import (source `schedule`, through the kind's queue like every import) for each record the
filter keeps and the ledger does not have as `succeeded`.

The owner of the checkpoint is the run holding its lease (`sweep#{organization}#{kind}` in the
state table): a run takes it with a conditional write, renews it with every checkpoint it saves
(conditional on still holding it), and gives it back at the end; a run that lost it (it outlived
its lease, another took over) stops. So two overlapping runs never both advance the checkpoint,
and a run killed anywhere leaves the last checkpoint it saved: the next run reads again from
there, queueing again at most the records of the page in flight (the ledger answers those
without calling Zoho). The checkpoint moves only over records whose message was sent, whose
import already succeeded or that the filter excludes (`checkpoint.py`).

A run stops at `max_records_per_run` records found, or when too little time is left for another
page, having saved its checkpoint; the next run continues. A run with `since` (the CLI's
`--since`, the sweep of a lapsed notification channel's gap) walks from that time without
reading, taking or moving the checkpoint.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from crm_to_books import dynamo
from crm_to_books.checkpoint import Checkpoint, CheckpointTooLarge, modified_second
from crm_to_books.clients import LazyClient
from crm_to_books.crm_gate import CrmGate, CrmProblem, crm_scope
from crm_to_books.crm_queue import enqueue_all, is_crm_id
from crm_to_books.entities import get_entity
from crm_to_books.intake import Intake
from crm_to_books.ledger import Ledger, iso
from crm_to_books.observability import logger
from crm_to_books.settings import Settings, Sync
from crm_to_books.zoho import AccessToken, CrmAnswer, ZohoClient

PER_PAGE = 200  # Zoho's most; fixed for a walk (a page token is bound to it)
PAGE_LIMIT = 2000  # Zoho serves pages by number only this far: then page tokens, or a new walk
SETTLE_SECONDS = 5  # the checkpoint stays this far behind now (see checkpoint.py)
LEASE_SECONDS = 120.0  # longer than one page takes; renewed with each checkpoint saved
PAGE_MARGIN_SECONDS = 30.0  # no page starts with less time left than this
# A walk Zoho will not continue (token expired, past 100,000 records, its parameters changed):
# a new walk from the checkpoint saved is always right.
RESTART_CODES = frozenset(
    {
        "PAGINATION_LIMIT_EXCEEDED",
        "DISCRETE_PAGINATION_LIMIT_EXCEEDED",
        "EXPIRED_VALUE",
        "TOKEN_BOUND_DATA_MISMATCH",
    }
)


@dataclass
class SweepResult:
    organization_id: str
    kind: str
    found: int = 0  # records changed since the checkpoint (or `since`)
    queued: int = 0
    already_imported: int = 0
    filtered: int = 0  # excluded by the sync's filter (or without a usable id)
    checkpoint: str | None = None  # every record modified before this time is handled
    complete: bool = False  # the run reached the last change
    stopped: str | None = None  # why it ended first (see `PROBLEMS` and the limits)
    message: str | None = None
    since: str | None = None  # a run from a given time: the checkpoint was left alone
    crm_calls: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        """It stopped on a problem (not at its limits, not because another run holds it)."""
        return self.stopped in PROBLEMS

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PROBLEMS = frozenset(
    {
        "rate_limited",
        "scope_missing",
        "unavailable",
        "connection_broken",
        "refused",
        "enqueue_failed",
        "checkpoint_too_large",
        "stuck",
    }
)


class EnqueueFailed(Exception):
    pass


class SweepStore:
    """The checkpoint and the run lease: the state table's `sweep#{organization}#{kind}`."""

    def __init__(
        self,
        settings: Settings,
        client: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._client = client
        self._clock = clock
        self.owner = uuid.uuid4().hex

    client = LazyClient("dynamodb")

    def begin(self, sync: Sync) -> Checkpoint | None:
        """Take the run lease: the checkpoint (the first run's: `sync.start`), or None when
        another run holds it."""
        now = self._clock()
        try:
            answer = self.client.update_item(
                TableName=self._settings.state_table,
                Key=_key(sync.organization_id, sync.kind),
                UpdateExpression="SET lease_owner = :me, lease_until = :until",
                ConditionExpression="attribute_not_exists(lease_until) OR lease_until < :now",
                ExpressionAttributeValues=dynamo.dump_values(
                    {":me": self.owner, ":until": now + LEASE_SECONDS, ":now": now}
                ),
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if dynamo.condition_failed(exc):
                return None
            raise
        item = dynamo.load(answer.get("Attributes")) or {}
        raw = item.get("checkpoint")
        return Checkpoint.decode(bytes(raw)) if raw else Checkpoint.starting(sync.start)

    def save(
        self, sync: Sync, checkpoint: Checkpoint, last_run: Mapping[str, Any] | None = None
    ) -> bool:
        """Store the checkpoint and renew the lease (`last_run`: and give the lease back).
        False: this run no longer holds the lease, and nothing was written."""
        now = self._clock()
        values: dict[str, Any] = {
            ":me": self.owner,
            ":cp": checkpoint.encode(),
            ":bound": checkpoint.bound_iso or "",
            ":now": iso(now),
        }
        update = "SET checkpoint = :cp, bound = :bound, updated_at = :now"
        if last_run is None:
            update += ", lease_until = :until"
            values[":until"] = now + LEASE_SECONDS
        else:
            update += ", last_run = :run REMOVE lease_owner, lease_until"
            values[":run"] = dict(last_run)
        try:
            self.client.update_item(
                TableName=self._settings.state_table,
                Key=_key(sync.organization_id, sync.kind),
                UpdateExpression=update,
                ConditionExpression="lease_owner = :me",
                ExpressionAttributeValues=dynamo.dump_values(values),
            )
        except ClientError as exc:
            if dynamo.condition_failed(exc):
                return False
            raise
        return True

    def read(self, organization_id: str, kind: str) -> dict[str, Any]:
        """What the state table holds for this sweep (no lease taken), for status."""
        answer = self.client.get_item(
            TableName=self._settings.state_table,
            Key=_key(organization_id, kind),
            ConsistentRead=True,
        )
        item = dynamo.load(answer.get("Item")) or {}
        return {
            "checkpoint": item.get("bound") or None,
            "running": float(item.get("lease_until") or 0) > self._clock(),
            "last_run": item.get("last_run"),
        }


class Sweeper:
    def __init__(
        self,
        settings: Settings,
        *,
        gate: CrmGate,
        zoho: ZohoClient,
        ledger: Ledger,
        intake: Intake,
        store: SweepStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.zoho = zoho
        self.ledger = ledger
        self.intake = intake
        self.store = store or SweepStore(settings, clock=clock)
        self._clock = clock

    def run(
        self,
        sync: Sync,
        *,
        time_limit: float,
        since: datetime | None = None,
        correlation_id: str | None = None,
    ) -> SweepResult:
        started = self._clock()
        self.settings.organization(sync.organization_id)  # UnknownOrganization if it is not
        result = SweepResult(sync.organization_id, sync.kind)
        calls_before = self.gate.calls
        walk = _Walk(self, sync, started + time_limit, correlation_id, result)
        if since is None:
            checkpoint = self.store.begin(sync)
            if checkpoint is None:
                result.stopped = "busy"
                result.message = "another sweep of this organization and kind is running"
                return result
        else:
            checkpoint = Checkpoint.starting(since)
            result.since = checkpoint.bound_iso
        walk.checkpoint = checkpoint
        try:
            walk.run()
        except CrmProblem as exc:
            result.stopped, result.message = exc.reason, exc.message
        except EnqueueFailed as exc:
            result.stopped, result.message = "enqueue_failed", str(exc)
        except CheckpointTooLarge as exc:
            result.stopped, result.message = "checkpoint_too_large", str(exc)
        result.checkpoint = walk.checkpoint.bound_iso
        result.crm_calls = self.gate.calls - calls_before
        result.seconds = round(self._clock() - started, 3)
        if since is None and not walk.lease_lost:
            summary = {k: v for k, v in result.as_dict().items() if v is not None}
            if not self.store.save(sync, walk.checkpoint, last_run=summary):
                walk.lease_lost = True
        if walk.lease_lost and result.stopped is None:
            result.stopped = "lease_lost"
            result.message = "the run outlived its lease: another run carries on"
        log = logger.warning if result.failed else logger.info
        said = {k: v for k, v in result.as_dict().items() if v is not None}
        if "message" in said:  # a LogRecord's own attribute
            said["detail"] = said.pop("message")
        log("CRM sweep done", extra=said)
        return result


@dataclass(frozen=True, slots=True)
class _Taken:
    crm_id: str
    modified: int
    what: str  # seen, filtered, import


@dataclass
class _Position:
    """Where a walk is: its If-Modified-Since, and the next page (token, else number)."""

    since: str | None
    started: float  # when this walk's first page was asked for (our clock)
    token: str | None = None
    page: int = 1
    restarts: int = 0

    def restart(self, since: str | None, started: float, counted: bool = True) -> None:
        self.since, self.started, self.token, self.page = since, started, None, 1
        self.restarts += counted


@dataclass
class _Walk:
    """One run's walk through the CRM module, page by page."""

    sweeper: Sweeper
    sync: Sync
    deadline: float
    correlation_id: str | None
    result: SweepResult
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    lease_lost: bool = False

    def run(self) -> None:
        sync, result = self.sync, self.result
        at = _Position(self.checkpoint.modified_since(), started=self.sweeper._clock())
        while not self._limit_reached():
            answer = self._read(at)
            if answer.nothing:
                self._complete(at)
                return
            if answer.http_status != 200:
                if answer.code not in RESTART_CODES or at.restarts >= 3:
                    raise CrmProblem(
                        "refused",
                        f"Zoho CRM refused the records read: HTTP {answer.http_status} "
                        f"{answer.code} {answer.message}".rstrip(),
                    )
                at.restart(self.checkpoint.modified_since(), self.sweeper._clock())
                continue
            before = self.checkpoint
            info = answer.body.get("info") or {}
            exhausted = self._page(
                [r for r in answer.body.get("data") or [] if isinstance(r, dict)]
            )
            if self.lease_lost:
                return
            if exhausted:
                result.stopped = "max_records"
                result.message = f"found max_records_per_run ({sync.max_records_per_run})"
                return
            if not info.get("more_records"):
                self._complete(at)
                return
            if info.get("next_page_token"):
                at.token = str(info["next_page_token"])
            elif at.page * PER_PAGE < PAGE_LIMIT:
                at.page += 1
            elif self.checkpoint == before:
                raise CrmProblem(
                    "stuck",
                    "Zoho CRM lists more records at one second than its pages reach without "
                    "page tokens",
                )
            else:  # no token and no more numbered pages: a new walk from the checkpoint
                at.restart(self.checkpoint.modified_since(), self.sweeper._clock(), counted=False)

    def _complete(self, at: _Position) -> None:
        """The walk reached the last change: close the checkpoint up to the walk's start (the
        run saves it as it ends)."""
        self.result.complete = True
        self.checkpoint = self.checkpoint.close(int(at.started) - SETTLE_SECONDS)

    def _limit_reached(self) -> bool:
        result, sync = self.result, self.sync
        if result.found >= sync.max_records_per_run:
            result.stopped = "max_records"
            result.message = f"found max_records_per_run ({sync.max_records_per_run})"
        elif self.sweeper._clock() > self.deadline - PAGE_MARGIN_SECONDS:
            result.stopped, result.message = "time_limit", "the run's time is up"
        return result.stopped is not None

    def _read(self, at: _Position) -> CrmAnswer:
        s, sync = self.sweeper, self.sync
        module = get_entity(sync.kind).crm_module
        fields = ("Modified_Time", *sync.filter)
        since, token, page = at.since, at.token, at.page

        def read(access: AccessToken) -> CrmAnswer:
            return s.zoho.crm_records(
                access,
                module,
                fields,
                modified_since=since,
                page_token=token,
                page=None if token else page,
                per_page=PER_PAGE,
            )

        connection = s.settings.organization(sync.organization_id).connection
        return s.gate.call(connection, crm_scope(module), read, self.deadline)

    def _classify(self, records: Sequence[dict[str, Any]]) -> tuple[list[_Taken], bool]:
        """The page's records in order, each `seen` (handled before), `filtered` or to
        `import`, up to the run's limit (True: it cut the page short)."""
        result, sync = self.result, self.sync
        taken: list[_Taken] = []
        for record in records:
            crm_id = str(record.get("id") or "")
            modified = modified_second(record.get("Modified_Time"))
            if modified is None:
                logger.warning("CRM record without a Modified_Time", extra={"crm_id": crm_id})
            elif self.checkpoint.handled(crm_id, modified):
                taken.append(_Taken(crm_id, modified, "seen"))
            elif result.found >= sync.max_records_per_run:
                return taken, True
            else:
                result.found += 1
                keep = is_crm_id(crm_id) and passes(record, sync.filter)
                taken.append(_Taken(crm_id, modified, "import" if keep else "filtered"))
        return taken, False

    def _page(self, records: Sequence[dict[str, Any]]) -> bool:
        """Handle a page's records in order, up to the run's limit; save the checkpoint. True
        when the limit left some of the page's new records for the next run."""
        s, sync, result = self.sweeper, self.sync, self.result
        taken, exhausted = self._classify(records)
        wanted = [t.crm_id for t in taken if t.what == "import"]
        done = s.ledger.succeeded(sync.organization_id, sync.kind, wanted) if wanted else set()
        sent = enqueue_all(
            s.intake,
            sync.kind,
            sync.organization_id,
            [i for i in wanted if i not in done],
            "schedule",
            self.correlation_id,
        )
        handled: list[tuple[str, int]] = []
        for t in taken:
            if t.what == "import" and t.crm_id not in done and not sent.get(t.crm_id):
                break  # the checkpoint stops before the first record not queued
            handled.append((t.crm_id, t.modified))
            if t.what == "filtered":
                result.filtered += 1
            elif t.what == "import":
                if t.crm_id in done:
                    result.already_imported += 1
                else:
                    result.queued += 1
        self.checkpoint = self.checkpoint.advance(handled, int(s._clock()) - SETTLE_SECONDS)
        if result.since is None and not s.store.save(sync, self.checkpoint):
            self.lease_lost = True
        missing = sum(1 for i in wanted if i not in done and not sent.get(i))
        if missing:
            raise EnqueueFailed(f"{missing} import message(s) could not be sent to the queue")
        return exhausted


def passes(record: Mapping[str, Any], rules: Mapping[str, Iterable[str]]) -> bool:
    """The record has, for every field of the filter, one of its values. A lookup field
    (`{"name", "id"}`) matches by name or id; a multi-select list by any of its items."""
    return all(
        any(value in set(allowed) for value in _values(record.get(name)))
        for name, allowed in rules.items()
    )


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [v for item in value for v in _values(item)]
    if isinstance(value, dict):
        return [str(value[k]) for k in ("name", "id") if value.get(k) is not None]
    if isinstance(value, bool):
        return [str(value).lower()]
    return [str(value)]


def _key(organization_id: str, kind: str) -> dict[str, Any]:
    return {"pk": {"S": f"sweep#{organization_id}#{kind}"}}
