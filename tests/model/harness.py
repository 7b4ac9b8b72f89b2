"""The engine in the simulated world: containers (each an `Importer`, as a Lambda container
builds it) invoked by HTTP, SQS, the re-drive job and the token keeper, and what the test
reads back to check the engine's promises."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

from crm_to_books import api, batch, dynamo
from crm_to_books.entities import KINDS
from crm_to_books.ledger import Ledger, epoch
from crm_to_books.limiter import RateLimiter
from crm_to_books.models import ImportRecord, Status
from crm_to_books.pipeline import Importer
from crm_to_books.settings import Organization, Settings
from crm_to_books.tokens import TokenProvider
from crm_to_books.topology import FUNCTION_TIMEOUT_SECONDS, Names
from crm_to_books.zoho import ZohoClient
from tests.model.world import (
    ACCOUNTS,
    Key,
    Message,
    ModelQueues,
    ModelSqs,
    ModelZoho,
    Scheduler,
    SimClock,
    Task,
    zoho_session,
)
from tests.support.lambda_events import api_event

ORG = "700100200"
CONNECTION = "default"
NAMES = Names("model")
LIMITS = Organization(
    connection=CONNECTION, requests_per_minute=5, daily_limit=60, max_concurrency=2
)
SETTINGS = Settings(
    ledger_table=NAMES.ledger_table,
    state_table=NAMES.state_table,
    organizations={ORG: LIMITS},
    connections={CONNECTION: "model/connections/default"},
    queue_urls={},  # set by the world: its queues' URLs
    zoho_connect_timeout=1.0,
    zoho_read_timeout=2.0,
    lookup_settle_seconds=30.0,  # the model's Zoho commits at most 4 s late
    token_wait_seconds=1.0,
    sync_wait_seconds=5.0,
)
VISIBILITY = 6 * FUNCTION_TIMEOUT_SECONDS
MAX_RECEIVES = 4
START = 1_795_000_000.0  # 2026-11-18, a Wednesday afternoon (UTC): days roll during runs


@dataclass
class Answer:
    """What a synchronous HTTP caller was told, and what it could check then."""

    key: Key
    status: int
    body: dict[str, Any]
    respond_async: bool
    task: str
    books_then: list[str]
    imported_by_it: int


class _Context:
    """A Lambda context whose remaining time follows the simulated clock."""

    function_name = "model"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:model"
    memory_limit_in_mb = 512
    aws_request_id = "model"
    log_group_name = log_stream_name = "model"

    def __init__(self, clock: SimClock, started: float) -> None:
        self._clock, self._started = clock, started

    def get_remaining_time_in_millis(self) -> int:
        left = FUNCTION_TIMEOUT_SECONDS - (self._clock.now - self._started)
        return max(int(left * 1000), 0)


class _Events:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def publish(self, record: ImportRecord, correlation_id: str | None = None) -> bool:
        self.sent.append((record.status.value, record.crm_id))
        return True


@dataclass
class World:
    """moto's DynamoDB (started by the caller), the model's Zoho and queues, and containers."""

    clock: SimClock = field(default_factory=lambda: SimClock(START))
    scheduler: Scheduler = field(default_factory=Scheduler)
    skews: dict[str, float] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)
    containers: dict[str, Importer] = field(default_factory=dict)
    faulty_ddb: bool = True
    last_death: float = float("-inf")  # when an invocation was last killed (or timed out)
    journal: list[tuple[Any, ...]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.zoho = ModelZoho(
            self.clock,
            self.scheduler,
            read_timeout=SETTINGS.zoho_read_timeout,
            missing=frozenset({"999"}),
        )
        self.queues = ModelQueues(self.clock, self.scheduler, VISIBILITY, MAX_RECEIVES)
        self.sqs = ModelSqs(self.queues)
        self.settings = SETTINGS.model_copy(
            update={"queue_urls": {kind: self.queues.url(kind) for kind in KINDS}}
        )
        self.ddb = boto3.client("dynamodb", region_name="us-east-1")
        for name, spec in NAMES.tables.items():
            self.ddb.create_table(**spec.create_table_request(name))
        self.ddb.meta.events.register("before-parameter-build.dynamodb", self._keep_params)
        self.ddb.meta.events.register("before-call.dynamodb", self._before_ddb)
        self.ddb.meta.events.register("after-call.dynamodb", self._after_ddb)
        self.events = _Events()

    # -- steps the engine takes outside itself ------------------------------------------------
    @staticmethod
    def _keep_params(params: Any, context: Any = None, **_: Any) -> None:
        if context is not None:
            context["model_params"] = dict(params)

    def _before_ddb(self, model: Any, **_: Any) -> Any:
        choice = self.scheduler.checkpoint(f"dynamodb {model.name}")
        if not self.faulty_ddb:
            return None
        if choice == "ddb_throttle":
            return _ddb_error("ProvisionedThroughputExceededException", model.name)
        if choice == "ddb_conflict" and model.name == "TransactWriteItems":
            return _ddb_error("TransactionCanceledException", model.name, conflict=True)
        return None

    def _after_ddb(
        self, model: Any, context: Any = None, http_response: Any = None, **_: Any
    ) -> None:
        params = (context or {}).get("model_params") or {}
        self._journal(model.name, params, getattr(http_response, "status_code", 0))
        self.scheduler.checkpoint(f"dynamodb {model.name} answered")

    def _journal(self, operation: str, params: dict[str, Any], status: int) -> None:
        """Who wrote which ledger record, and how (for a failure's explanation)."""
        if operation in {"GetItem", "Query", "Scan", "BatchGetItem"} or status != 200:
            return
        task = self.scheduler.current()
        writes = (
            [params]
            if operation != "TransactWriteItems"
            else [next(iter(item.values())) for item in params.get("TransactItems", [])]
        )
        for write in writes:
            if write.get("TableName") != self.settings.ledger_table:
                continue
            key = write.get("Key") or {
                k: v for k, v in write.get("Item", {}).items() if k in ("pk", "sk")
            }
            values = write.get("ExpressionAttributeValues") or {}
            said = {k: v for k, v in values.items() if k in (":status", ":s", ":parked", ":to")}
            self.journal.append(
                (
                    round(self.clock.now - START, 1),
                    task.name if task else "test",
                    operation,
                    key.get("sk", {}).get("S"),
                    str(said)[:160],
                )
            )

    def sleep(self, seconds: float) -> None:
        self.scheduler.checkpoint("sleep")
        self.clock.now += max(seconds, 0.0)

    def load_secret(self, secret_id: str, force: bool) -> dict[str, Any]:
        self.scheduler.checkpoint("secretsmanager GetSecretValue")
        return {
            "client_id": "1000.MODEL",
            "client_secret": "model-client-secret",
            "refresh_token": self.zoho.refresh_token,
            "accounts_url": ACCOUNTS,
        }

    # -- containers -------------------------------------------------------------------------
    def container(self, name: str) -> Importer:
        """A warm container, or a cold one if it never ran or its last invocation died."""
        if name not in self.containers:

            def clock() -> float:  # this container's clock, as skewed as it is now
                return self.clock.now + self.skews.get(name, 0.0)

            s = self.settings
            zoho = ZohoClient(
                session=zoho_session(self.zoho),
                connect_timeout=s.zoho_connect_timeout,
                read_timeout=s.zoho_read_timeout,
                clock=clock,
            )
            limiter = RateLimiter(
                s.state_table,
                window_seconds=s.rate_window_seconds,
                client=self.ddb,
                clock=clock,
                sleep=self.sleep,
            )
            ledger = Ledger(
                s.ledger_table, client=self.ddb, clock=clock, permits=limiter, sleep=self.sleep
            )
            tokens = TokenProvider(
                s,
                zoho,
                client=self.ddb,
                load_secret=self.load_secret,
                clock=clock,
                sleep=self.sleep,
            )
            self.containers[name] = Importer(
                s,
                ledger=ledger,
                limiter=limiter,
                tokens=tokens,
                zoho=zoho,
                events=self.events,  # type: ignore[arg-type]
                sqs=self.sqs,
                clock=clock,
                sleep=self.sleep,
            )
        return self.containers[name]

    def busy(self, name: str) -> bool:
        task = self.scheduler.tasks.get(name)
        return task is not None and not task.done

    def invoke_http(self, name: str, key: Key, respond_async: bool) -> Task:
        importer = self.container(name)
        app = api.build_app(importer, import_kinds=(key.kind,))
        headers = {"Prefer": "respond-async"} if respond_async else {}
        event = api_event(
            "POST", f"/v1/crm/{key.kind}/{key.crm_id}/import", {"organization_id": ORG}, headers
        )
        started = self.clock.now

        def work() -> None:
            answer = app.resolve(event, _Context(self.clock, started))
            task = self.scheduler.current()
            assert task is not None
            self.answers.append(
                Answer(
                    key=key,
                    status=int(answer["statusCode"]),
                    body=json.loads(answer["body"]),
                    respond_async=respond_async,
                    task=task.name,
                    books_then=list(self.zoho.books.get(key, [])),
                    imported_by_it=self.zoho.imports_by_task[task.name],
                )
            )

        self.zoho.imports_by_task[name] = 0
        return self.scheduler.start(name, started, work, key=key)

    def invoke_sqs(self, name: str, kind: str, batch_size: int = 1) -> Task | None:
        """An invocation with up to `batch_size` messages, as Lambda's event source mapping
        hands a batch to a function."""
        messages = []
        while len(messages) < batch_size:
            message = self.queues.receive(kind, holder=name)
            if message is None:
                break
            messages.append(message)
        if not messages:
            return None
        importer = self.container(name)
        started = self.clock.now
        arn = self.queues.arn(kind)
        event = {"Records": [_sqs_record(m, arn) for m in messages]}

        def work() -> None:
            answer = batch.process_batch(
                event,
                _Context(self.clock, started),
                importer=importer,
                kind=kind,
                sqs=self.sqs,  # type: ignore[arg-type]
            )
            failed = {f["itemIdentifier"] for f in answer["batchItemFailures"]}
            for message in messages:
                if message.id not in failed:  # Lambda deletes what the batch did not report
                    self.queues.delete(kind, message)

        keys = tuple(m.key() for m in messages)
        task = self.scheduler.start(name, started, work, key=keys[0], keys=keys)
        for message in messages:
            message.task = task
        return task

    def invoke_job(self, name: str, job: str) -> Task:
        importer = self.container(name)
        work = importer.redrive_due if job == "redrive" else importer.keep_tokens_fresh
        return self.scheduler.start(name, self.clock.now, work, job=job)

    def kill(self, name: str) -> None:
        self.scheduler.kill(name)
        self.containers.pop(name, None)  # its memory is gone: the next invocation is cold
        self.last_death = self.clock.now  # what it held is released by its lease's end

    def enforce_timeouts(self) -> None:
        """Lambda stops an invocation at its timeout, wherever it is."""
        for task in self.scheduler.running():
            if self.clock.now - task.started_at > FUNCTION_TIMEOUT_SECONDS:
                self.kill(task.name)

    def tick(self, seconds: float) -> None:
        self.clock.now += seconds
        self.enforce_timeouts()
        self.zoho.land_late_commits()

    # -- what the test reads ------------------------------------------------------------------
    def records(self) -> Iterator[tuple[ImportRecord, dict[str, Any]]]:
        """Every ledger record and its raw item (read outside any invocation)."""
        pages = self.ddb.get_paginator("scan").paginate(TableName=self.settings.ledger_table)
        for page in pages:
            for raw in page["Items"]:
                item = dynamo.load(raw) or {}
                yield _record(item), item

    def messages_for(self, key: Key) -> list[Message]:
        return [m for m in self.queues.messages() if m.key() == key]

    def dead_for(self, key: Key) -> list[Message]:
        return [m for m in self.queues.dead() if m.key() == key]


def _record(item: dict[str, Any]) -> ImportRecord:
    from crm_to_books.ledger import to_record

    return to_record(item)


def key_of(record: ImportRecord) -> Key:
    return Key(record.organization_id, record.kind, record.crm_id)


def next_attempt(item: dict[str, Any]) -> float | None:
    value = item.get("next_attempt_epoch")
    if value is None and item.get("next_attempt_at"):
        return epoch(str(item["next_attempt_at"]))
    return float(value) if value is not None else None


def terminal(record: ImportRecord) -> bool:
    return record.status in (Status.SUCCEEDED, Status.FAILED)


def _sqs_record(message: Message, arn: str) -> dict[str, Any]:
    return {
        "messageId": message.id,
        "receiptHandle": message.receipt,
        "body": message.body,
        "attributes": {
            "ApproximateReceiveCount": str(message.receive_count),
            "SentTimestamp": "0",
            "SenderId": "model",
            "ApproximateFirstReceiveTimestamp": "0",
        },
        "messageAttributes": {
            name: {"stringValue": value["StringValue"], "dataType": value["DataType"]}
            for name, value in message.attributes.items()
        },
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": arn,
        "awsRegion": "us-east-1",
    }


class _Http:
    status_code = 400


def _ddb_error(code: str, operation: str, conflict: bool = False) -> tuple[Any, dict[str, Any]]:
    parsed: dict[str, Any] = {"Error": {"Code": code, "Message": "model fault"}}
    if conflict:
        parsed["CancellationReasons"] = [{"Code": "None"}, {"Code": "TransactionConflict"}]
    parsed["ResponseMetadata"] = {"HTTPStatusCode": 400}
    return _Http(), parsed


__all__ = ["ClientError", "World"]
