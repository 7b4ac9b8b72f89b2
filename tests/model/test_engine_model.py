"""The engine's promises, proven against a model: no duplicate, no orphan, Zoho's limits kept,
answers that say only what is known, under any fault at any step.

Hypothesis drives three containers (HTTP sync and async, SQS, the re-drive job, the token
keeper) through the simulated world of `tests/model/world.py`: it picks which invocation takes
its next step and how that step goes (every Zoho fault the engine must survive, throttled or
conflicting DynamoDB writes, SQS refusing a message), kills invocations between any two steps,
and moves time. After every step it checks the invariants below; when a run ends it heals
Zoho, drains every queue and job, and checks that every accepted import ended `succeeded`
(once in Books) or `failed` for a reason that holds.

`make test` runs a bounded number of examples; `make model` runs many more
(MODEL_EXAMPLES, MODEL_STEPS). Shrunk counterexamples become plain tests in
tests/functional/test_engine_promise.py.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator

import boto3
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from moto import mock_aws

from crm_to_books.limiter import RateLimiter
from crm_to_books.models import Status
from crm_to_books.tokens import ZOHO_TOKEN_WINDOW
from tests.model.harness import (
    LIMITS,
    ORG,
    SETTINGS,
    START,
    World,
    key_of,
    next_attempt,
    terminal,
)
from tests.model.world import BOOKS_FAULTS, FULL_SCOPES, TOKEN_FAULTS, Key, Killed, Task

CONTAINERS = ("c0", "c1", "c2")
KEYS = (
    Key(ORG, "account", "101"),
    Key(ORG, "account", "102"),
    Key(ORG, "item", "201"),
    Key(ORG, "item", "999"),  # not in CRM: Zoho refuses it for good
)


# Each step goes well most of the time, as most calls do, so that a run gets far enough for
# faults to meet each other; what can go wrong depends on the step: Zoho's faults at a call to
# Zoho, throttles and conflicts at a DynamoDB call, SQS refusing at an SQS call. At any step
# the invocation may "pause", for others to run meanwhile. (kind of step: chance of "ok",
# chance of "pause", the faults sharing the rest)
STEP_CHOICES: dict[str, tuple[float, float, tuple[str, ...]]] = {
    "zoho token": (0.78, 0.04, tuple(f for f in TOKEN_FAULTS if f != "ok")),
    "zoho": (0.68, 0.04, tuple(f for f in BOOKS_FAULTS if f != "ok")),
    "dynamodb": (0.975, 0.01, ("ddb_throttle", "ddb_conflict")),
    "sqs send batch": (0.5, 0.05, ("sqs_down", "sqs_partial")),  # rare: when reached, fail often
    "sqs": (0.92, 0.03, ("sqs_down",)),
    "": (0.95, 0.05, ()),
}


def _choose(rng: random.Random, label: str) -> str:
    kind = next((k for k in STEP_CHOICES if k and label.startswith(k)), "")
    ok, pause, faults = STEP_CHOICES[kind]
    roll = rng.random()
    if roll < ok or (not faults and roll < 1 - pause):
        return "ok"
    if roll < ok + pause or not faults:
        return "pause"
    return rng.choice(faults)


TICKS = (0.5, 2.0, 10.0, 20.0, 61.0, 61.0, 200.0, 900.0, 3_700.0, 6 * 3_600.0 + 1, 86_400.0)
ZOHO_CHANGES = (
    "reimport_error",
    "reimport_duplicate",
    "connect",
    "connect_items_only",
    "revoke",
    "reimport_duplicate",
    "connect",
)
SKEWS = (0.0, 0.02, -0.02, 0.05, -0.05)
LIMITER_LEASE = 40.0  # RateLimiter's lease_seconds, as the engine builds it
SLACK = 2.0  # whole-second delays and clock skew: a message may come this much after its time


class EngineModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._mock = mock_aws()
        self._mock.start()
        self.world = World(skews={"c0": 0.0, "c1": 0.02, "c2": -0.02})
        self.steps = self.kills = 0
        self.faults: set[str] = set()
        self.last_ddb_fault = float("-inf")  # a release not written is ended by its lease
        self.peek = boto3.client("dynamodb", region_name="us-east-1")  # no faults, no steps

    # -- what happens ----------------------------------------------------------------------
    @initialize(rng=st.randoms(use_true_random=False))
    def begin(self, rng: random.Random) -> None:
        """How each step goes is drawn from `rng` (Hypothesis chooses, and shrinks, its seed)."""
        logging.getLogger("crm-to-books").setLevel(logging.CRITICAL)
        self.rng = rng

    @rule(c=st.sampled_from(CONTAINERS), key=st.sampled_from(KEYS), respond_async=st.booleans())
    def http(self, c: str, key: Key, respond_async: bool) -> None:
        if not self.world.busy(c):
            self._advance(self.world.invoke_http(c, key, respond_async))

    @rule(
        c=st.sampled_from(CONTAINERS),
        kind=st.sampled_from(("account", "item")),
        batch_size=st.sampled_from((1, 1, 3)),
    )
    def sqs(self, c: str, kind: str, batch_size: int) -> None:
        if not self.world.busy(c):
            self._advance(self.world.invoke_sqs(c, kind, batch_size))

    @rule(c=st.sampled_from(CONTAINERS), job=st.sampled_from(("redrive", "keeper")))
    def job(self, c: str, job: str) -> None:
        if not self.world.busy(c):
            self._advance(self.world.invoke_job(c, job))

    @precondition(lambda self: self.world.scheduler.running())
    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """A paused invocation goes on."""
        running = sorted(t.name for t in self.world.scheduler.running())
        self._advance(self.world.scheduler.tasks[data.draw(st.sampled_from(running))])

    def _advance(self, task: Task | None) -> None:
        """Run an invocation step by step, each step going as drawn, until it ends or pauses."""
        while task is not None and not task.done:
            label = task.pending or ""
            choice = _choose(self.rng, label)
            if choice == "pause":
                return
            self.world.scheduler.step(task.name, choice)
            self.steps += 1
            if choice != "ok" and _applies(label, choice):
                self.faults.add(choice)
                if choice.startswith("ddb_"):
                    self.last_ddb_fault = self.world.clock.now
            self.world.enforce_timeouts()

    @precondition(lambda self: self.world.scheduler.running())
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        running = sorted(t.name for t in self.world.scheduler.running())
        self.world.kill(data.draw(st.sampled_from(running)))
        self.kills += 1

    @rule(seconds=st.sampled_from(TICKS))
    def tick(self, seconds: float) -> None:
        self.world.tick(seconds)

    @rule(c=st.sampled_from(CONTAINERS), skew=st.sampled_from(SKEWS))
    def clock_jump(self, c: str, skew: float) -> None:
        """A container's clock steps (NTP keeps Lambda's clocks within tens of milliseconds)."""
        self.world.skews[c] = skew

    @rule(change=st.sampled_from(ZOHO_CHANGES))
    def zoho_changes(self, change: str) -> None:
        """An operator or Zoho changes something: the refresh token revoked, a new one
        connected (`crm-to-books connect`, perhaps without the contacts scopes), or the way
        Zoho answers a second import of a record."""
        zoho = self.world.zoho
        if change == "revoke":
            zoho.revoke()
        elif change == "connect":
            zoho.connect(FULL_SCOPES)
        elif change == "connect_items_only":
            zoho.connect(frozenset({"ZohoBooks.settings.ALL"}))
        else:
            zoho.reimport = change.removeprefix("reimport_")

    # -- what must hold after every step ----------------------------------------------------
    @invariant()
    def at_most_one_books_record_per_crm_record(self) -> None:
        for key, ids in self.world.zoho.books.items():
            assert len(ids) <= 1, f"duplicate in Books for {key}: {ids}"

    @invariant()
    def the_ledger_tells_the_truth_and_every_import_has_an_owner(self) -> None:
        world, now = self.world, self.world.clock.now
        for record, item in world.records():
            key = key_of(record)
            books = world.zoho.books.get(key, [])
            if record.status is Status.SUCCEEDED:
                assert record.books_id in books, f"{key} succeeded as {record.books_id}: {books}"
            elif record.status is Status.FAILED:
                assert not books and not _late(world, key), f"{key} failed but is in Books"
            elif record.status is Status.IN_PROGRESS:
                pass  # a live lease; once it runs out, the re-drive job's scan owns it
            elif record.status is Status.QUEUED:
                assert world.messages_for(key) or world.dead_for(key) or _held(world, key), (
                    f"{key} queued with no message"
                )
            elif record.parked:
                assert next_attempt(item) is not None, f"{key} parked without a time"
            elif record.in_dlq:
                assert world.dead_for(key) or world.messages_for(key) or _held(world, key), (
                    f"{key} says dead-lettered, but no message is left"
                )
            else:
                _owned_by_a_message_in_time(world, record, item, now)

    @invariant()
    def zohos_limits_are_never_crossed(self) -> None:
        zoho = self.world.zoho
        requests = sorted(zoho.token_requests)
        for i, start in enumerate(requests):
            window = [t for t in requests[i:] if t < start + ZOHO_TOKEN_WINDOW]
            assert len(window) <= 10, f"{len(window)} token requests within 10 minutes"
        arrivals = sorted(c.arrived for c in zoho.calls if c.organization_id == ORG)
        per_minute = LIMITS.requests_per_minute
        for i, start in enumerate(arrivals):
            window = [t for t in arrivals[i:] if t < start + SETTINGS.rate_window_seconds]
            assert len(window) <= per_minute, f"{len(window)} Books calls within a minute"
        in_flight = sum(1 for c in zoho.calls if not c.done)
        assert in_flight <= LIMITS.max_concurrency, f"{in_flight} Books calls at once"

    @invariant()
    def no_seat_outlives_its_invocation(self) -> None:
        """A seat (one of the organization's Books calls at once) is held only while an
        invocation may use it: one still running, or, for a lease, one that died or met a
        DynamoDB fault (its release not written). A permit left held by an attempt that ended
        keeps the organization's calls down for 40 s."""
        world = self.world
        now = world.clock.now
        since = max(world.last_death, self.last_ddb_fault) + LIMITER_LEASE + 1.0
        if world.scheduler.running() or now < since:
            return
        limiter = RateLimiter(
            SETTINGS.state_table,
            window_seconds=SETTINGS.rate_window_seconds,
            client=self.peek,
            clock=lambda: now + 0.25,  # the containers' skews and the stamps' rounding
        )
        held = limiter.snapshot(ORG)["in_flight"]
        assert held == 0, f"{held} seats held with no invocation running"

    @invariant()
    def answers_claim_only_what_is_known(self) -> None:
        for answer in self.world.answers:
            said = answer.body
            if answer.status == 200:
                books_id = next(iter(said["data"].values()))
                assert [books_id] == answer.books_then, f"200 for {answer.key}: {said}"
            elif answer.status == 422:
                assert not answer.books_then, f"422 for {answer.key} while in Books"
            elif answer.status == 429:
                assert answer.imported_by_it == 0, "429 'nothing imported' but it imported"
            elif answer.status in (202, 503):
                # accepted for an attempt to come: never "done"; an async request may be
                # accepted for a record that failed before (its message tries again)
                done = ("succeeded",) if answer.respond_async else ("succeeded", "failed")
                assert said["import"]["status"] not in done, said

    # -- when a run ends --------------------------------------------------------------------
    def teardown(self) -> None:
        try:
            if not getattr(self, "_failed", False):
                self._drain_and_check()
        finally:
            self.world.scheduler.kill_all()
            self._mock.stop()

    def _events(self) -> None:
        """What the run reached, for `--hypothesis-show-statistics`."""
        world = self.world
        event(f"steps taken: {_bucket(self.steps)}")
        event(f"invocations killed: {_bucket(self.kills)}")
        event(f"Books calls: {_bucket(len(world.zoho.calls))}")
        event(f"Books records: {sum(len(ids) for ids in world.zoho.books.values())}")
        for fault in self.faults:
            event(f"fault injected: {fault}")
        if any("sqs send batch" in t.trace for t in world.scheduler.history):
            event("a lane's delayed copies sent together")
        for record, _ in world.records():
            event(f"before the drain, a record was {record.status.value}")

    def _drain_and_check(self) -> None:
        """Zoho heals; the jobs run and the queues drain, as in production; then every import
        the ledger accepted has ended, exactly once in Books."""
        world = self.world
        self._events()
        world.scheduler.kill_all()
        world.containers.clear()
        if (
            world.zoho.refresh_token in world.zoho.revoked
            or world.zoho.refresh_scopes != FULL_SCOPES
        ):
            world.zoho.connect(FULL_SCOPES)
        world.faulty_ddb = False
        self.kept: object = None
        for _ in range(80):
            world.tick(_until_something_is_due(world))
            for job in ("keeper", "redrive"):
                task = world.invoke_job("c0", job)
                _run(world, task)
                if job == "keeper":
                    self.kept = task.result
            world.queues.redrive_dlq()  # `crm-to-books redrive`
            for kind in ("account", "item"):
                while (task := world.invoke_sqs("c1", kind)) is not None:
                    _run(world, task)
            if _settled(world):
                break
        for record, item in world.records():
            key = key_of(record)
            assert terminal(record), (
                f"{key} never finished: {record.status} {record.detail} {item} "
                f"connection: {world.container('c0').tokens.state('default')} "
                f"messages: {world.messages_for(key)} dead: {world.dead_for(key)} "
                f"keeper: {self.kept} zoho: {world.zoho.refresh_token} {world.zoho.revoked}"
            )
            if key.crm_id == "999":
                assert record.status is Status.FAILED
            else:
                assert record.status is Status.SUCCEEDED, f"{key}: {record.detail}"
                assert world.zoho.books.get(key) == [record.books_id]


def _bucket(n: int) -> str:
    return next(
        f"{lo}-{hi}" for lo, hi in ((0, 0), (1, 4), (5, 19), (20, 99), (100, 10**9)) if n <= hi
    )


def _applies(label: str, choice: str) -> bool:
    if label.startswith("zoho token"):
        return choice in TOKEN_FAULTS
    if label.startswith("zoho"):
        return choice in BOOKS_FAULTS
    if label.startswith("dynamodb"):
        return choice.startswith("ddb")
    if label.startswith("sqs send batch"):
        return choice in ("sqs_down", "sqs_partial")
    return label.startswith("sqs") and choice == "sqs_down"


def _run(world: World, task: Task | None) -> None:
    while task is not None and not task.done:
        world.scheduler.step(task.name, "ok")
        world.enforce_timeouts()
    world.zoho.land_late_commits()
    if task is not None and task.error is not None and not isinstance(task.error, Killed):
        raise AssertionError(f"{task.name} ({task.job or task.key}) failed") from task.error


def _until_something_is_due(world: World) -> float:
    """Seconds to the next thing due (a parked record's time, a message's), at least past
    Zoho's token window: the drain moves time as fast as the service would see it pass."""
    now = world.clock.now
    times = [next_attempt(item) for record, item in world.records() if not terminal(record)]
    times += [m.visible_at for m in world.queues.messages()]
    due = [t - now for t in times if t is not None and t > now]
    return max(ZOHO_TOKEN_WINDOW + 1, min(due, default=0.0) + 1)


def _settled(world: World) -> bool:
    if any(True for _ in world.queues.messages()) or any(True for _ in world.queues.dead()):
        return False
    return all(terminal(record) for record, _ in world.records())


def _late(world: World, key: Key) -> bool:
    return any(k == key for _, k in world.zoho.late)


def _story(world: World, key: Key) -> str:
    """The writes to this record, and the last steps of the invocations about it."""
    sk = f"{key.kind}#{key.crm_id}"
    writes = [entry for entry in world.journal if entry[3] == sk][-8:]
    tasks = [
        f"{t.name}@{t.started_at - START:.1f}({t.job or 'import'}"
        f"{', killed' if t.killed else ''}{', ' + type(t.error).__name__ if t.error else ''}"
        f"): {t.trace[-12:]}"
        for t in world.scheduler.history
        if key in t.keys or t.job == "redrive"
    ][-5:]
    ids = {m.id for m in [*world.queues.messages(), *world.queues.dead()] if m.key() == key}
    sqs = [e for e in world.queues.log if e[2] in ids or key.crm_id in e[1]][-10:]
    return f"writes {writes}; invocations {tasks}; sqs {sqs}"


def _held(world: World, key: Key) -> bool:
    """A running invocation about this import (or the re-drive job, between taking a parked
    record and sending its message) holds it between two of its steps."""
    return any(key in t.keys or t.job == "redrive" for t in world.scheduler.running())


def _owned_by_a_message_in_time(world: World, record, item, now: float) -> None:  # type: ignore[no-untyped-def]
    key = key_of(record)
    messages = world.messages_for(key)
    if not messages:
        assert _held(world, key), (
            f"{key} retrying with no message and not parked: {_story(world, key)}"
        )
        return
    due = next_attempt(item)
    if due is None or _held(world, key):
        return
    # A message an invocation took since the record's time kept the promise (if that invocation
    # died before writing, the queue brings the message back when its visibility ends).
    if any(m.received_at is not None and m.received_at >= due - SLACK for m in messages):
        return
    soonest = min(m.visible_at for m in messages)
    assert soonest <= max(due, now) + SLACK, (
        f"{key} due at {due - now:.1f}s but its message comes at {soonest - now:.1f}s: "
        f"{[(m.id, m.receive_count, m.holder, m.received_at, m.visible_at) for m in messages]} "
        f"{_story(world, key)}"
    )


TestEngineModel = EngineModel.TestCase
# A failure's shrinking may take minutes; each step has its own deadlock guard (world.py).
TestEngineModel = pytest.mark.timeout(1800)(TestEngineModel)
TestEngineModel.settings = settings(
    max_examples=int(os.environ.get("MODEL_EXAMPLES", "40")),
    stateful_step_count=int(os.environ.get("MODEL_STEPS", "80")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=os.environ.get("MODEL_SEED") is None,
)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No real AWS; no metrics printed for thousands of simulated imports."""
    import contextlib

    from crm_to_books import attempt, observability

    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(observability.metrics, "add_metric", lambda **_: None)
    monkeypatch.setattr(attempt, "single_metric", lambda **_: contextlib.nullcontext(_NoMetric()))
    service = logging.getLogger("crm-to-books")
    level = service.level
    yield
    service.setLevel(level)  # the model silences it: the tests after it read its lines


class _NoMetric:
    def add_dimension(self, name: str, value: str) -> None:
        pass
