"""The in-process world of the engine benchmarks: moto for AWS, the Zoho sandbox for Zoho.

Each `Importer` made here is one Lambda container (its own token memory, limiter snapshot and
Zoho connection pool); they share AWS (moto) and Zoho (the sandbox), as containers do.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import io
import itertools
import json
import logging
import math
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import boto3
import botocore.client
from botocore.exceptions import ClientError

from crm_to_books import topology as t
from crm_to_books.batch import PARALLEL_RECORDS
from crm_to_books.entities import KINDS
from crm_to_books.limiter import Reservation
from crm_to_books.models import ImportRequest
from crm_to_books.observability import logger, metrics
from crm_to_books.pipeline import Importer, ImportOutcome
from crm_to_books.settings import Organization, Settings
from crm_to_books.zoho import ZohoAnswer, ZohoClient
from crm_to_books_cli.local.emulator import forget_library_clients
from crm_to_books_cli.sandbox import SandboxConfig, ZohoSandbox

NAMES = t.Names("bench")
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "POWERTOOLS_TRACE_DISABLED": "true",
}
# Limits no benchmark reaches, for the benchmarks that are not about limits.
UNLIMITED = Organization(requests_per_minute=10_000, daily_limit=10_000_000, max_concurrency=100)


class ByteSink(io.TextIOBase):
    """Swallows what the library prints (logs, EMF metrics) and counts it: log volume is a cost."""

    def __init__(self) -> None:
        self.bytes = 0
        self.lines = 0
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.bytes += len(text.encode())
            self.lines += text.count("\n")
        return len(text)


@contextlib.contextmanager
def quiet() -> Iterator[ByteSink]:
    sink = ByteSink()
    handler = logger.registered_handler
    assert isinstance(handler, logging.StreamHandler)
    previous = handler.setStream(sink)
    try:
        with contextlib.redirect_stdout(sink):  # Powertools prints EMF metrics to stdout
            yield sink
    finally:
        handler.setStream(previous)
        metrics.clear_metrics()


class CallCounter:
    """botocore API calls by (service, operation), and the time spent in them; thread-safe."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()  # calls answered with an error (condition failed)
        self.seconds = 0.0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def installed(self) -> Iterator[CallCounter]:
        original = getattr(botocore.client.BaseClient, "_make_api_call")  # noqa: B009 (untyped)

        def counted(client: Any, operation: str, params: Any) -> Any:
            name = f"{client.meta.service_model.service_name}:{operation}"
            started = time.perf_counter()
            try:
                return original(client, operation, params)
            except ClientError:
                with self._lock:
                    self.failed[name] += 1
                raise
            finally:
                with self._lock:
                    self.calls[name] += 1
                    self.seconds += time.perf_counter() - started

        with mock.patch.object(botocore.client.BaseClient, "_make_api_call", counted):
            yield self

    def take(self) -> tuple[Counter[str], Counter[str], float]:
        """Calls, failed calls and seconds since the last take."""
        with self._lock:
            out = (self.calls, self.failed, self.seconds)
            self.calls, self.failed, self.seconds = Counter(), Counter(), 0.0
        return out


@dataclass
class World:
    sandbox: ZohoSandbox
    settings: Settings
    calls: CallCounter
    sink: ByteSink
    org: str
    zoho_seconds: float = 0.0  # time spent in Zoho import calls (answer.elapsed), all threads
    importers: list[Importer] = field(default_factory=list)

    def importer(self, **settings: Any) -> Importer:
        """A new container; `settings` override fields of the world's settings."""
        made = Importer(self.settings.model_copy(update=settings))
        self.importers.append(made)
        return made

    def counters(self, window_seconds: float | None = None) -> dict[str, Any]:
        """The sandbox's counters (docs/sandbox.md), typed for reading."""
        counters: dict[str, Any] = self.sandbox.counters(window_seconds=window_seconds)
        return counters

    def request(self, kind: str, crm_id: int | str) -> ImportRequest:
        return ImportRequest(kind=kind, organization_id=self.org, crm_id=str(crm_id))

    def item(self, table: str, key: dict[str, Any]) -> dict[str, Any]:
        """A raw DynamoDB item (for item sizes and shared state)."""
        got = boto3.client("dynamodb").get_item(TableName=table, Key=key, ConsistentRead=True)
        item: dict[str, Any] = got.get("Item", {})
        return item


@contextlib.contextmanager
def _transactions_back_up_their_items() -> Iterator[None]:
    """moto backs up each table a transaction names by a deep copy of the whole table, once per
    item the transaction writes: its time grows with the table (a transaction of 10 records took
    about 80 ms against a 2,000-record ledger), which DynamoDB's does not. In the bench a
    transaction backs up only the items it names, and a cancelled one puts back just those: the
    same all-or-nothing answer, at a cost that does not grow with the table."""
    from moto.dynamodb import models
    from moto.dynamodb.models.table import Table

    original = models.DynamoDBBackend.transact_write_items

    class _NoTableCopies:  # moto's `copy`, except that a table is not copied
        def __getattr__(self, name: str) -> Any:
            return getattr(copy, name)

        @staticmethod
        def deepcopy(x: Any, memo: Any = None) -> Any:
            return x if isinstance(x, Table) else copy.deepcopy(x, memo)

    def transact(backend: Any, transact_items: list[dict[str, Any]]) -> None:
        saved = []
        for write in transact_items:
            _, op = next(iter(write.items()))
            name = op.get("TableName")
            if name not in backend.tables:
                continue
            key = op.get("Key")
            if key is None:  # a Put: its key is in its item
                table = backend.tables[name]
                names = [n for n in (table.hash_key_attr, table.range_key_attr) if n]
                key = {n: op["Item"][n] for n in names}
            current = backend.get_item(name, key)
            saved.append((name, key, current.to_json()["Attributes"] if current else None))
        try:
            original(backend, transact_items)
        except Exception:
            for name, key, attrs in reversed(saved):
                if attrs is None:
                    backend.delete_item(name, key)
                else:
                    backend.put_item(name, attrs)
            raise

    with (
        mock.patch.object(models, "copy", _NoTableCopies()),
        mock.patch.object(models.DynamoDBBackend, "transact_write_items", transact),
    ):
        yield


@contextlib.contextmanager
def world(
    sandbox_config: SandboxConfig | None = None,
    *,
    limits: Organization = UNLIMITED,
    window: float = 1.0,
    **settings: Any,
) -> Iterator[World]:
    """moto + the sandbox + the stack's tables, bus and secret. `window` compresses Zoho's minute
    for the sandbox and the limiter alike (kept short where limits are not under study, so the
    limiter's call log stays as short as at Zoho's real 100 per minute)."""
    from moto import mock_aws
    from moto.core.botocore_stubber import BotocoreStubber

    os.environ.update(FAKE_AWS_ENV)
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        os.environ.pop(name, None)
    # moto's in-process backends are not thread-safe: serve one request at a time, as moto's
    # server does (see tests/functional/conftest.py).
    lock = threading.RLock()
    original = BotocoreStubber.process_request

    def serialized(self: BotocoreStubber, request: Any) -> Any:
        with lock:
            return original(self, request)

    # Benchmarks import any ids they like: every well-formed id is a CRM record.
    config = (sandbox_config or SandboxConfig()).with_changes(
        rate_window_seconds=window, auto_create_crm_records=True
    )
    forget_library_clients()  # the library caches its boto3 clients: they must be made under moto
    with (
        quiet() as sink,
        mock.patch.object(BotocoreStubber, "process_request", serialized),
        _transactions_back_up_their_items(),
        mock_aws(),
        ZohoSandbox(port=0, config=config) as sandbox,
    ):
        org = sandbox.organizations[0]  # the one that allows every kind
        sandbox.set_limits(
            org,
            requests_per_minute=limits.requests_per_minute,
            daily_limit=limits.daily_limit,
            max_concurrency=limits.max_concurrency,
        )
        _provision()
        secret = _store_secret(sandbox)
        with CallCounter().installed() as calls:
            made = World(
                sandbox=sandbox,
                settings=Settings(
                    ledger_table=NAMES.ledger_table,
                    state_table=NAMES.state_table,
                    event_bus_name=NAMES.event_bus,
                    organizations={org: limits},
                    connections={"default": secret},
                    rate_window_seconds=window,
                    **settings,
                ),
                calls=calls,
                sink=sink,
                org=org,
            )
            import_record, timing = ZohoClient.import_record, threading.Lock()

            def timed(client: ZohoClient, *args: Any, **kwargs: Any) -> ZohoAnswer:
                answer = import_record(client, *args, **kwargs)
                with timing:
                    made.zoho_seconds += answer.elapsed
                return answer

            with mock.patch.object(ZohoClient, "import_record", timed):
                try:
                    yield made
                finally:
                    forget_library_clients()


def _provision() -> None:
    ddb: Any = boto3.client("dynamodb")
    for name, spec in NAMES.tables.items():
        ddb.create_table(**spec.create_table_request(name))
    boto3.client("events").create_event_bus(Name=NAMES.event_bus)
    sqs = boto3.client("sqs")
    for kind in KINDS:
        sqs.create_queue(QueueName=NAMES.queue(kind))


def _store_secret(sandbox: ZohoSandbox) -> str:
    name = NAMES.connection_secret("default")
    value = {
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
        "refresh_token": sandbox.refresh_token,
        "accounts_url": sandbox.url,
    }
    boto3.client("secretsmanager").create_secret(Name=name, SecretString=json.dumps(value))
    return name


def sqs_wait(outcome: ImportOutcome) -> float:
    """Message visibility is whole seconds: crm_to_books.batch sets `ceil(retry_after)`."""
    return math.ceil(outcome.retry_after or 1.0)


@dataclass
class Drained:
    outcomes: list[ImportOutcome] = field(default_factory=list)
    retries: int = 0  # retry_later answers (limiter denials, leases held by others)

    def count(self, result: str) -> int:
        return sum(o.result == result for o in self.outcomes)


def run_workers(
    importers: Sequence[Importer],
    requests: Sequence[ImportRequest],
    deadline: float,
    *,
    wait: Callable[[ImportOutcome], float] = sqs_wait,
    pace: float = 0.0,
) -> Drained:
    """One thread per container, taking requests in turn, as queue pollers do.

    A `retry_later` waits `wait(outcome)` and tries again (by default as SQS hands a message
    back after its visibility timeout), with the rate slot held for it if one was (as the
    delayed copy of a message carries it). `pace` spaces a worker's imports. Stops at `deadline`
    (monotonic): what is not finished by then is left out.
    """
    todo = iter(requests)
    lock = threading.Lock()
    done = Drained()

    def next_request() -> ImportRequest | None:
        with lock:
            return next(todo, None)

    def work(importer: Importer) -> None:
        while (request := next_request()) is not None:
            held = None  # the rate slot held for the retry, as the delayed message carries it
            while time.monotonic() < deadline:
                outcome = importer.run(request, reservation=held)
                with lock:
                    if outcome.result != "retry_later":
                        done.outcomes.append(outcome)
                        break
                    done.retries += 1
                held = outcome.reservation
                time.sleep(max(0.0, min(wait(outcome), deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                return
            if pace:
                time.sleep(pace)

    with ThreadPoolExecutor(len(importers), thread_name_prefix="container") as pool:
        for future in [pool.submit(work, i) for i in importers]:
            future.result()
    return done


@dataclass(order=True)
class _Message:
    visible_at: float
    seq: int
    request: ImportRequest = field(compare=False)
    held: Reservation | None = field(compare=False, default=None)  # the turn it carries


class Queue:
    """A kind's queue: the oldest visible message first; a retry comes back after its delay,
    with the turn the limiter held for it, if any (as the batch's delayed copy carries it)."""

    def __init__(self) -> None:
        self._heap: list[_Message] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def send(
        self, request: ImportRequest, delay: float = 0.0, held: Reservation | None = None
    ) -> None:
        now = time.monotonic()
        with self._lock:
            message = _Message(now + delay, next(self._seq), request, held)
            heapq.heappush(self._heap, message)

    def receive(self, deadline: float, stop: threading.Event, most: int = 1) -> list[_Message]:
        """Up to `most` visible messages (a Lambda poller's batch; in a backlog, a full one)."""
        while time.monotonic() < deadline and not stop.is_set():
            with self._lock:
                got: list[_Message] = []
                while self._heap and len(got) < most:
                    if self._heap[0].visible_at > time.monotonic():
                        break
                    got.append(heapq.heappop(self._heap))
                if got:
                    return got
                wait = self._heap[0].visible_at - time.monotonic() if self._heap else 0.05
            time.sleep(min(max(wait, 0.001), 0.05))
        return []


@dataclass
class Served:
    done: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # org -> imported
    parked: int = 0
    retries: int = 0
    # The handler's SQS sends for those retries: one each, but a lane's turns that wrote
    # nothing go together, up to 10 a `SendMessageBatch` (`batch._Outbox`).
    sends: int = 0
    other: int = 0  # neither imported nor back in the queue (failed, already imported)
    finished_at: dict[tuple[str, str], float] = field(default_factory=dict)
    busy_seconds: float = 0.0  # containers' time from a batch's receipt to its last record done

    def retried(self, outcome: ImportOutcome, later: list[int]) -> None:
        """A retry the handler sends again: at once if its attempt wrote the record, else with
        the lane's others (`later`, counted when the lane ends)."""
        self.retries += 1
        if outcome.recorded:
            self.sends += 1
        else:
            later[0] += 1

    def count(self, outcome: ImportOutcome) -> tuple[str, str] | None:
        """An outcome that is not a retry; the record's key when it was imported."""
        if outcome.parked:
            self.parked += 1  # the re-drive job owns it now
            return None
        if outcome.result != "imported":
            self.other += 1
            return None
        request = outcome.request
        self.done[request.organization_id] += 1
        key = (request.organization_id, request.crm_id)
        self.finished_at[key] = time.monotonic()
        return key


def serve(
    importers: Sequence[Importer],
    queue: Queue,
    deadline: float,
    stop_when: tuple[str, str] | None = None,
    *,
    wait: Callable[[ImportOutcome], float] = sqs_wait,
    batch: int = 1,
) -> Served:
    """Containers polling one queue until `deadline`, or until `stop_when` (organization, CRM
    id) is imported. A `retry_later` goes back to the queue, visible again after
    `wait(outcome)`, to whichever container receives it first (as SQS hands a delayed message
    to any poller): unlike `run_workers`, a container does not wait for its own message.
    `batch`: messages a container receives at once, imported as the SQS handler does a Lambda
    batch: its organizations at once, a lane (thread) each, each one's records in turn."""
    served, lock = Served(), threading.Lock()
    stop = threading.Event()

    def work(importer: Importer) -> None:
        with ThreadPoolExecutor(min(batch, PARALLEL_RECORDS), "lane") as lanes:
            while messages := queue.receive(deadline, stop, batch):
                received = time.monotonic()
                for done in [lanes.submit(lane, importer, ms) for ms in _lanes(messages)]:
                    done.result()  # a record's error ends the run
                with lock:  # what Lambda bills: the invocation lasts until its last record
                    served.busy_seconds += time.monotonic() - received

    def lane(importer: Importer, messages: list[_Message]) -> None:
        together: set[int] = set()  # parked with others (`Importer.park_known`), as the handler
        asks, ask = 2, True  # before the first, and after the first parked by its own attempt
        later = [0]  # copies of turns that wrote nothing: sent together when the lane ends
        try:
            for i, message in enumerate(messages):
                if stop.is_set() or time.monotonic() >= deadline:
                    return
                if ask:
                    asks -= 1
                    together |= _park_together(importer, messages[i:], together, served, lock)
                parked = id(message.request) not in together and handle(importer, message, later)
                ask = parked and asks > 0
        finally:
            with lock:
                served.sends += math.ceil(later[0] / 10)

    def handle(importer: Importer, message: _Message, later: list[int]) -> bool:
        """Import one message; whether it was parked."""
        request = message.request
        current.org = request.organization_id
        outcome = importer.run(request, reservation=message.held)
        with lock:
            if outcome.result == "retry_later" and not outcome.parked:
                served.retried(outcome, later)
                queue.send(request, wait(outcome), outcome.reservation)
            elif served.count(outcome) == stop_when:
                stop.set()
        return outcome.parked

    with ThreadPoolExecutor(len(importers), thread_name_prefix="container") as pool:
        for future in [pool.submit(work, i) for i in importers]:
            future.result()  # a container's error ends the run, not just its thread
    return served


def _park_together(
    importer: Importer,
    messages: list[_Message],
    together: set[int],
    served: Served,
    lock: threading.Lock,
) -> set[int]:
    """As the SQS handler does (`batch.ParallelBatchProcessor`): the lane's messages yet to run
    that its container's view shows parked, parked together. Their requests' ids."""
    rest = [m.request for m in messages if m.held is None and id(m.request) not in together]
    if len(messages) < 2 or not rest:
        return set()
    current.org = rest[0].organization_id
    parked = importer.park_known(rest)
    with lock:
        for outcome in parked:
            served.count(outcome)
    return {id(outcome.request) for outcome in parked}


def _lanes(messages: list[_Message]) -> list[list[_Message]]:
    """As the SQS handler does (`crm_to_books.batch`): a lane per organization, its records one
    after the other, those with a turn first, soonest first."""
    by_org: dict[str, list[_Message]] = defaultdict(list)
    for m in sorted(messages, key=lambda m: m.held.start_at if m.held else math.inf):
        by_org[m.request.organization_id].append(m)
    return list(by_org.values())


class _Current(threading.local):
    org = ""  # the organization whose message this container thread is importing


current = _Current()
