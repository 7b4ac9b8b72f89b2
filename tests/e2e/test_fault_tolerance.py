"""Fault tolerance: a few hundred imports through SQS, EventBridge and HTTP while Zoho fails in
every way the sandbox can make it fail, then DESIGN.md's promises checked from outside:
nothing lost, nothing imported twice, every request in a known state with its reason, and no
secret in the logs.

One run (the module fixture `run`) drives its own local stack through three phases; each test
checks one promise against what the run left behind. docs/fault-tolerance.md describes the
faults, the phases and the accounting.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
import requests

from crm_to_books.settings import Organization as ServiceOrganization
from crm_to_books.topology import Names
from crm_to_books_cli.local import LocalStack
from crm_to_books_cli.local.stack import REPO_ROOT
from crm_to_books_cli.sandbox import SandboxConfig
from crm_to_books_cli.sandbox.config import Organization as ZohoOrganization
from tests.e2e.drive import (
    CHANNELS,
    Answer,
    Driver,
    Key,
    RecordingSandbox,
    books_ids,
    connect,
    drain_dlq,
    ledger,
    ledgers,
    queue_depth,
    wait_for,
)
from tests.e2e.helpers import Logs

pytestmark = pytest.mark.timeout(300)

PREFIX = "e2e-faults"
LAYER = REPO_ROOT / "layers" / "core" / "python"
READ_TIMEOUT = 3.0  # the functions' Zoho read timeout in this stack; hangs outlast it
MAX_RECEIVE_COUNT = 3  # the queues dead-letter a message on its third failed receive
SETTLE_SECONDS = 120

FAULTY, ACCOUNTS_ONLY, REVOKED, THROTTLED = "700100200", "700100201", "700100202", "700100203"
ORGANIZATIONS = (FAULTY, ACCOUNTS_ONLY, REVOKED, THROTTLED)
CONNECTION = {
    FAULTY: "default",
    ACCOUNTS_ONLY: "default",
    REVOKED: "revocable",
    THROTTLED: "throttled",
}
EVERY_MODE = ("accounts_and_contacts", "vendors", "products")
CUSTOMERS_AND_ITEMS = ("account", "contact", "item")
MISSING = ("4199999999999999991", "4199999999999999992", "4199999999999999993")
# Limits far above the run's traffic: Zoho's limits have their own tests, and a 429 detour
# here would only stretch the run. The limiter still grants every call.
LIMITS = {"requests_per_minute": 10_000, "daily_limit": 1_000_000, "max_concurrency": 50}

# Books faults injected in phases B and C: exact counts, consumed by the first matching imports.
BOOKS_FAULTS: dict[str, Any] = {
    "scope": "imports",
    "fail_5xx_next": 8,  # 500 before the import happens
    "reset_before_next": 8,  # TCP reset before Zoho handles it
    "hang_after_commit_next": 8,  # imported, then no answer until the caller times out
    "hang_seconds": 60.0,
}
AFTER_COMMIT_FAULTS: dict[str, Any] = {
    "scope": "imports",
    "fail_5xx_next": 8,
    "fail_5xx_after_commit": True,  # imported, then a 502 HTML page from the edge
    "fail_5xx_status": 502,
}
VENDOR_FAULTS: dict[str, Any] = {  # phase A: every vendor import and look-up, until the DLQ
    "kind": "vendor",
    "fail_5xx_rate": 1.0,
    "fail_5xx_after_commit": True,  # the imports happen: the DLQ holds imports made unseen
    "fail_5xx_status": 502,
}
WAVE = 72  # imports per Books-fault phase


# --- the stack ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logs() -> Logs:
    return Logs()


@pytest.fixture(scope="module")
def stack(logs: Logs) -> Iterator[LocalStack]:
    """A stack of its own: a sandbox where a second import of a record makes a second Books
    record (so any double import shows), four organizations on three connections, a short
    Zoho read timeout, and real queue timings except a 3-receive DLQ policy."""
    zoho_orgs = tuple(
        ZohoOrganization(
            organization_id=org,
            name=f"fault tolerance {org}",
            sync_modes=("accounts_only",) if org == ACCOUNTS_ONLY else EVERY_MODE,
            **LIMITS,
        )
        for org in ORGANIZATIONS
    )
    sandbox = RecordingSandbox(
        port=0,
        config=SandboxConfig(
            reimport="duplicate",
            organizations=zoho_orgs,
            missing_crm_ids=frozenset(MISSING),
            auto_create_crm_records=True,  # every made-up id is a CRM record, except MISSING
        ),
    )
    names = {c: Names(PREFIX).connection_secret(c) for c in set(CONNECTION.values())}
    stack = LocalStack(
        prefix=PREFIX,
        api_port=0,
        aws_port=0,
        sandbox=sandbox,
        max_receive_count=MAX_RECEIVE_COUNT,
        batching_window=0.5,
        schedule_seconds={"token-keeper": 3600, "redrive": 3600},  # fired by the run itself
        settings={
            "zoho_read_timeout": READ_TIMEOUT,
            "lookup_settle_seconds": 3 * READ_TIMEOUT,  # the sandbox commits before it answers
            "organizations": {
                org: ServiceOrganization(connection=CONNECTION[org], **LIMITS)
                for org in ORGANIZATIONS
            },
            "connections": names,
        },
        log_sink=logs,
    )
    with stack:
        yield stack


# --- the plan ---------------------------------------------------------------------------------
class Ids:
    """Fresh 19-digit CRM ids, the same on every run (the sandbox creates CRM records for any)."""

    def __init__(self) -> None:
        self._next = 4_100_000_000_000_000_000

    def take(self, organization_id: str, kinds: Iterable[str], count: int) -> list[Key]:
        kinds = tuple(kinds)
        keys = []
        for n in range(count):
            self._next += 1
            keys.append((organization_id, kinds[n % len(kinds)], str(self._next)))
        return keys


def round_robin(keys: Iterable[Key]) -> list[tuple[Key, str]]:
    """Each key through one way in, the four ways in turn."""
    return [(key, CHANNELS[n % len(CHANNELS)]) for n, key in enumerate(keys)]


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def end_state(record: dict[str, Any]) -> str:
    """Which of the accounted end states a ledger record is in ("unaccounted" otherwise)."""
    status = record["status"]
    if status == "succeeded" and record.get("books_id"):
        return "succeeded"
    if status == "failed" and record.get("last_error"):
        return "failed"
    if status == "retrying" and record.get("last_error") and record.get("next_attempt_at"):
        if record.get("parked"):
            return "parked"
        return "dead-lettered" if record.get("in_dlq") else "waiting"
    return "unaccounted"


@dataclass
class Run:
    """What the run did and what it left behind."""

    expected: dict[Key, str] = field(default_factory=dict)  # key -> end state
    groups: dict[str, list[Key]] = field(default_factory=dict)
    records: dict[Key, dict[str, Any]] = field(default_factory=dict)
    by_status: dict[str, set[Key]] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)
    books: dict[str, dict[tuple[str, str], list[str]]] = field(default_factory=dict)
    dlq: list[Key] = field(default_factory=list)
    queued: dict[str, int] = field(default_factory=dict)  # kind -> messages its queue holds
    answers: list[Answer] = field(default_factory=list)
    revocation: dict[str, Any] = field(default_factory=dict)
    throttling: dict[str, Any] = field(default_factory=dict)
    secrets: set[str] = field(default_factory=set)
    log_lines: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds since the run began
    ids: Ids = field(default_factory=Ids)

    def expect(self, group: str, keys: list[Key], end: str) -> list[Key]:
        self.groups[group] = keys
        for key in keys:
            self.expected[key] = end
        return keys


def unsettled(
    stack: LocalStack, keys: Iterable[Key], ends: dict[Key, str] | str
) -> list[str] | None:
    """Keys whose ledger record is not yet in its expected end state (None when all are)."""
    keys = list(keys)
    records = ledgers(stack, sorted({k[0] for k in keys}))
    wanted = (lambda k: ends) if isinstance(ends, str) else ends.__getitem__
    late = [
        f"{k}: {records[k]['status'] if k in records else 'no record'} (want {wanted(k)})"
        for k in keys
        if k not in records or end_state(records[k]) != wanted(k)
    ]
    return late or None


def settle(stack: LocalStack, keys: Iterable[Key], ends: dict[Key, str] | str, what: str) -> None:
    keys = list(keys)
    last: list[list[str]] = [[]]

    def done() -> bool:
        late = unsettled(stack, keys, ends)
        last[0] = late or []
        return late is None

    try:
        wait_for(done, what, SETTLE_SECONDS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still waiting: {last[0][:10]}") from None


def in_dlq(stack: LocalStack, keys: list[Key]) -> bool:
    records = ledgers(stack, sorted({k[0] for k in keys}))
    return all(records.get(k, {}).get("in_dlq") for k in keys)


# --- phase A: Zoho up except for vendors; a revoked connection; a throttled one --------------
def burn_token_budget(sandbox: RecordingSandbox, refresh_token: str) -> int:
    """Another client of the same refresh token uses up Zoho's 10 grants per 10 minutes."""
    grants = int(token_requests(sandbox)["by_refresh_token"].get(refresh_token, 0))
    while grants < sandbox.config.token_requests_per_window:
        response = requests.post(
            f"{sandbox.url}/oauth/v2/token",
            data={
                "grant_type": "refresh_token",
                "client_id": sandbox.client_id,
                "client_secret": sandbox.client_secret,
                "refresh_token": refresh_token,
            },
            timeout=30,
        )
        assert response.json().get("access_token")
        grants += 1
    return grants


def token_requests(sandbox: RecordingSandbox) -> dict[str, Any]:
    counters: dict[str, Any] = sandbox.counters()
    return dict(counters["token_requests"])


def phase_a(stack: LocalStack, sandbox: RecordingSandbox, driver: Driver, run: Run) -> None:
    """Vendors fail until the DLQ; a connection is revoked; another is throttled; the rest of
    Zoho works (refusals, plain imports, the same record three ways at once)."""
    ids = run.ids
    # Given every vendor call failing after it took effect (imports happen, answers are 502s)
    sandbox.set_faults(**VENDOR_FAULTS)
    dead = run.expect("dead-lettered", ids.take(FAULTY, ["vendor"], 6), "dead-lettered")
    refused = run.expect(
        "refused",
        ids.take(ACCOUNTS_ONLY, ["contact", "item"], 8) + [(FAULTY, "account", m) for m in MISSING],
        "failed",
    )
    plain = run.expect("plain", ids.take(ACCOUNTS_ONLY, ["account"], 4), "succeeded")
    contended = run.expect("contended", ids.take(FAULTY, ["account"], 8), "succeeded")
    revocable = run.expect("before-revoke", ids.take(REVOKED, CUSTOMERS_AND_ITEMS, 8), "succeeded")
    unknown = run.expect("unknown-then-revoked", ids.take(REVOKED, ["vendor"], 1), "succeeded")
    throttled = run.expect("throttled", ids.take(THROTTLED, CUSTOMERS_AND_ITEMS, 8), "waiting")

    # And two connections of their own: one to revoke, one whose token budget another client of
    # its refresh token has used up
    run.revocation["tokens"] = [connect(stack, sandbox, "revocable")]
    throttled_token = connect(stack, sandbox, "throttled")
    burned = burn_token_budget(sandbox, throttled_token)

    # When all of it arrives at once: vendors through the queues (a synchronous first attempt
    # would add a back-off step before the DLQ), the contended records three ways at once; and
    # one throttled import goes first, so the refusal is Zoho's answer to exactly one request
    queued = ("sqs", "eventbridge", "http-async")
    vendors = [(key, queued[n % len(queued)]) for n, key in enumerate(dead + unknown)]
    everything = round_robin(refused + plain + revocable + throttled[:1]) + vendors
    everything += [(key, way) for key in contended for way in ("sqs", "eventbridge", "http")]
    driver.send(everything)

    # And the revocable connection's refresh token is revoked once one of its imports has an
    # unknown outcome (imported, answered 502); one import finds it revoked, then more come
    settle(stack, revocable, "succeeded", "imports before the revocation")
    wait_for(lambda: error_category(stack, unknown[0]) == "unknown_outcome", "a 502", 30)
    sandbox.revoke_refresh_token(run.revocation["tokens"][0])
    parked = run.expect("parked", ids.take(REVOKED, CUSTOMERS_AND_ITEMS, 16), "succeeded")
    driver.send([(parked[0], "sqs")])
    settle(stack, parked[:1] + throttled[:1], run.expected | {parked[0]: "parked"}, "refusals")
    driver.send(round_robin(parked[1:] + throttled[1:]))

    # Then the refusals and plain imports end at once, the throttled ones wait, the revoked
    # connection's imports park, and the vendors fail until their last delivery
    settle(stack, refused + plain + contended, run.expected, "phase A's outcomes")
    settle(stack, throttled, "waiting", "imports waiting for the throttled token")
    run.throttling = {
        "refresh_token": throttled_token,
        "burned": burned,
        "requests_after": token_requests(sandbox)["by_refresh_token"],
    }
    settle(stack, parked + unknown, "parked", "imports parked on the broken connection")
    run.revocation["counters_while_broken"] = sandbox.counters()
    snapshot = ledgers(stack, ORGANIZATIONS)
    run.revocation["parked"] = {k: r for k, r in snapshot.items() if r.get("parked")}
    wait_for(lambda: in_dlq(stack, dead), "vendor imports on their last delivery", SETTLE_SECONDS)

    # And once the vendors had their last delivery (their next receive moves them to the DLQ),
    # Zoho recovers and the operator reconnects the revoked connection
    sandbox.clear_faults()
    reconnect(stack, sandbox, run)


# --- phases B and C: Books fails before, during and after imports ----------------------------
def phase_b(stack: LocalStack, sandbox: RecordingSandbox, driver: Driver, run: Run) -> None:
    """5xx before the import, resets before Zoho handles it, hangs after it took effect (the
    re-driven imports of the repaired connection arrive meanwhile)."""
    sandbox.set_faults(**BOOKS_FAULTS)
    wave = run.expect("wave-b", run.ids.take(FAULTY, CUSTOMERS_AND_ITEMS, WAVE), "succeeded")
    driver.send(round_robin(wave))
    used = faults_used(sandbox)
    # Changing the faults releases answers still held by a hang. Every hang began before
    # `used`, and its caller gives up READ_TIMEOUT later: only then may the faults change.
    time.sleep(max(0.0, used + READ_TIMEOUT + 1.0 - time.monotonic()))


def reconnect(stack: LocalStack, sandbox: RecordingSandbox, run: Run) -> None:
    """What the operator does, and `crm-to-books connect` then has the stack do: a new refresh
    token in the secret; the token keeper (fired now) finds it and clears the broken mark; the
    re-drive job (fired now, on the real clock) re-enqueues the imports parked on the connection,
    however recently they parked. The parked set is read once no attempt is under way."""
    run.revocation["tokens"].append(connect(stack, sandbox, "revocable"))
    keeper = stack.fire("token-keeper")
    wait_for(lambda: not any_in_progress(stack), "no attempt under way", SETTLE_SECONDS)
    run.revocation["due"] = {k: r for k, r in ledgers(stack, ORGANIZATIONS).items() if r["parked"]}
    redrive = stack.fire("redrive")
    run.revocation["keeper"] = keeper.result if keeper.ok else keeper.error
    run.revocation["redrive"] = redrive.result if redrive.ok else redrive.error


def any_in_progress(stack: LocalStack) -> bool:
    return any(ledger(stack, org, "in_progress") for org in ORGANIZATIONS)


def phase_c(stack: LocalStack, sandbox: RecordingSandbox, driver: Driver, run: Run) -> None:
    """5xx after the import took effect (an HTML 502 from the edge)."""
    sandbox.set_faults(**AFTER_COMMIT_FAULTS)
    wave = run.expect("wave-c", run.ids.take(FAULTY, CUSTOMERS_AND_ITEMS, WAVE), "succeeded")
    driver.send(round_robin(wave))
    faults_used(sandbox)


def remaining(sandbox: RecordingSandbox) -> dict[str, int]:
    state: dict[str, Any] = sandbox.fault_state()
    return dict(state["remaining"])


def faults_used(sandbox: RecordingSandbox) -> float:
    """Wait until every injected `*_next` fault was delivered; when that was seen."""
    return wait_for(
        lambda: not any(remaining(sandbox).values()) and time.monotonic(),
        "every injected fault used",
        SETTLE_SECONDS,
        interval=0.1,
    )


def error_category(stack: LocalStack, key: Key) -> str | None:
    record = ledger(stack, key[0]).get(key) or {}
    return (record.get("last_error") or {}).get("category")


@pytest.fixture(scope="module")
def run(stack: LocalStack, logs: Logs) -> Run:
    sandbox = stack.sandbox
    assert isinstance(sandbox, RecordingSandbox)
    started = time.monotonic()
    result = Run()
    driver = Driver(stack)
    try:
        for phase in (phase_a, phase_b, phase_c):
            phase(stack, sandbox, driver, result)
            result.timings[phase.__name__] = time.monotonic() - started
        sandbox.clear_faults()
        # Then everything settles: each record in its end state, the queues holding only what
        # waits, the DLQ what was dead-lettered
        settle(stack, result.expected, result.expected, "every record in its end state")
        result.timings["records settled"] = time.monotonic() - started
        queues_settle(stack, result.expected)
        result.timings["queues settled"] = time.monotonic() - started
    finally:
        driver.close()
        sandbox.clear_faults()
    result.seconds = time.monotonic() - started
    observe(stack, sandbox, driver, result, logs)
    return result


def queues_settle(stack: LocalStack, expected: dict[Key, str]) -> None:
    waiting = Counter(k[1] for k, end in expected.items() if end == "waiting")
    dead = Counter(k[1] for k, end in expected.items() if end == "dead-lettered")
    for kind, url in stack.queue_urls.items():
        dlq = stack.dlq_urls[kind]
        wait_for(
            lambda url=url, kind=kind: queue_depth(stack, url) == waiting[kind],  # type: ignore[misc]
            f"the {kind} queue holding only waiting imports",
            SETTLE_SECONDS,
        )
        wait_for(
            lambda dlq=dlq, kind=kind: queue_depth(stack, dlq) == dead[kind],  # type: ignore[misc]
            f"the {kind} DLQ holding its dead-lettered imports",
            SETTLE_SECONDS,
        )


def observe(
    stack: LocalStack, sandbox: RecordingSandbox, driver: Driver, run: Run, logs: Logs
) -> None:
    """Everything the tests check, read once the run settled (Zoho's counters before the Books
    listing, which is itself Books traffic)."""
    run.records = ledgers(stack, ORGANIZATIONS)
    for status in ("queued", "in_progress", "retrying", "succeeded", "failed"):
        run.by_status[status] = {k for org in ORGANIZATIONS for k in ledger(stack, org, status)}
    run.counters = sandbox.counters()
    run.queued = {kind: queue_depth(stack, url) for kind, url in stack.queue_urls.items()}
    run.dlq = [key for kind in stack.dlq_urls for key in drain_dlq(stack, kind)]
    run.answers = list(driver.answers)
    run.books = {org: books_ids(sandbox, org) for org in ORGANIZATIONS}
    run.secrets = {sandbox.client_secret, sandbox.refresh_token, *sandbox.issued}
    run.log_lines = logs.lines()


# --- the promises --------------------------------------------------------------------------------
def test_every_accepted_request_ends_in_a_known_state_with_its_reason(run: Run) -> None:
    # Every request the service accepted has exactly one ledger record, and nothing else does
    accepted = {answer.key for answer in run.answers}
    assert accepted == set(run.expected)
    assert set(run.records) == accepted

    # Each record is in the end state its faults lead to, and says why
    wrong = {
        key: (end_state(run.records[key]), want)
        for key, want in run.expected.items()
        if end_state(run.records[key]) != want
    }
    assert not wrong
    for key, record in run.records.items():
        assert record["detail"], key
        if record["status"] != "succeeded":
            assert record["last_error"]["message"] and record["last_error"]["category"], key
    assert not run.by_status["queued"] and not run.by_status["in_progress"]


def test_every_answer_a_caller_got_is_a_documented_one(run: Run) -> None:
    allowed = {"http": {200, 422, 503}, "http-async": {200, 202}}
    for answer in run.answers:
        if answer.status is None:
            continue
        assert answer.status in allowed[answer.channel], (answer.key, answer.status, answer.body)
        if answer.status >= 400:
            assert isinstance(answer.body["code"], int) and isinstance(answer.body["message"], str)
        if answer.status == 503:
            assert answer.body["code"] == 1503
            assert int(answer.headers["Retry-After"]) >= 0 and answer.headers["Location"]


def test_the_status_filter_lists_each_record_under_its_status(run: Run) -> None:
    for status, keys in run.by_status.items():
        assert keys == {k for k, r in run.records.items() if r["status"] == status}, status


def test_no_record_was_imported_twice_and_each_books_id_is_zohos(run: Run) -> None:
    counters = run.counters
    assert counters["duplicates"] == 0
    for (org, kind, crm_id), record in run.records.items():
        made = counters["books_records"].get(org, {}).get(kind, {}).get(crm_id, 0)
        held = run.books[org].get((kind, crm_id), [])
        end = end_state(record)
        if end == "succeeded":
            # Imported once, and the Books id the ledger (and the caller) got is Zoho's
            assert made == 1 and held == [record["books_id"]], (org, kind, crm_id, held)
        elif end == "dead-lettered":
            # The vendor imports happened, unseen (502 after commit): once, never again
            assert made == 1 and len(held) == 1, (org, kind, crm_id, held)
        else:
            assert made == 0 and not held, (org, kind, crm_id, held)
    for answer in run.answers:
        if answer.status == 200:
            assert list(answer.body["data"].values()) == [run.records[answer.key]["books_id"]]


def test_no_message_was_lost_and_the_dlq_holds_exactly_the_dead_lettered(run: Run) -> None:
    ends = Counter(end_state(record) for record in run.records.values())
    accepted = len(run.expected)
    # accepted = succeeded + failed + parked + dead-lettered + waiting (held by a queue message)
    assert (
        accepted
        == sum(ends[e] for e in ("succeeded", "failed", "parked"))
        + ends["dead-lettered"]
        + ends["waiting"]
    )
    assert ends["unaccounted"] == 0
    # The queues hold one message per waiting import and nothing else
    waiting = Counter(k[1] for k, r in run.records.items() if end_state(r) == "waiting")
    assert run.queued == {kind: waiting[kind] for kind in run.queued}
    # The DLQ holds one message per record marked in_dlq, and only those
    marked = sorted(k for k, r in run.records.items() if r.get("in_dlq"))
    assert sorted(run.dlq) == marked == sorted(run.groups["dead-lettered"])
    for key in marked:
        assert run.records[key]["last_error"]["category"] == "unknown_outcome"


def test_unknown_outcomes_were_looked_up_in_books_not_imported_again(run: Run) -> None:
    counters = run.counters
    # Given every injected fault was delivered
    assert counters["resets"] == BOOKS_FAULTS["reset_before_next"]
    assert counters["hangs"] == BOOKS_FAULTS["hang_after_commit_next"]
    vendors = 3 * len(run.groups["dead-lettered"])  # three deliveries each, then the DLQ
    after_commit = AFTER_COMMIT_FAULTS["fail_5xx_next"]
    assert counters["errors_5xx"] >= BOOKS_FAULTS["fail_5xx_next"] + after_commit + vendors
    # Then each import that happened unseen (a hang, a 5xx after commit) was found by a look-up
    found = [
        key
        for key, record in run.records.items()
        if record["status"] == "succeeded" and "found in Books" in record["detail"]
    ]
    unseen = (
        BOOKS_FAULTS["hang_after_commit_next"]
        + after_commit
        + len(run.groups["unknown-then-revoked"])
    )
    assert len(found) == unseen
    for key in found:
        assert run.counters["imports"][key[0]][key[1]][key[2]] == 1


def test_a_revoked_refresh_token_parks_imports_until_an_operator_connects_again(
    run: Run,
) -> None:
    revocation = run.revocation
    old_token, new_token = revocation["tokens"]
    parked = run.groups["parked"] + run.groups["unknown-then-revoked"]
    # While broken: every import parked with the reason, none reached Books (the one before
    # the revocation with an unknown outcome did, once), and Zoho was asked for a token with
    # the revoked refresh token once, not once per import
    assert set(revocation["parked"]) == set(parked)
    for key, record in revocation["parked"].items():
        assert record["last_error"]["category"] == "connection_broken", key
    made = run.groups["before-revoke"] + run.groups["unknown-then-revoked"]
    imports = revocation["counters_while_broken"]["imports"].get(REVOKED, {})
    assert sum(sum(by_id.values()) for by_id in imports.values()) == len(made)
    assert revocation["counters_while_broken"]["token_requests"]["rejected"] == 1
    # After `connect`: the keeper finds the new token, the re-drive job sends every parked
    # import again, and each ends imported once (the unknown one found in Books, not re-made)
    statuses = {c["connection"]: c["status"] for c in revocation["keeper"]["connections"]}
    assert statuses["revocable"] == "refreshed"
    due = revocation["due"]  # parked when the re-drive job ran
    assert set(due) == set(parked), {k: due[k] for k in set(due) - set(parked)}
    assert revocation["redrive"] == {"redriven": len(parked)}
    for key in parked:
        assert run.records[key]["status"] == "succeeded", key
    assert run.counters["token_requests"]["by_refresh_token"][new_token] >= 2  # grant + refresh
    assert old_token != new_token


def test_an_unknown_outcome_is_still_looked_up_after_its_connection_was_repaired(
    run: Run,
) -> None:
    # Given an import that happened unseen (502 after commit), parked by the revocation before
    # its retry could look it up
    (unknown,) = run.groups["unknown-then-revoked"]
    assert run.revocation["parked"][unknown]["parked"]
    # Then, re-driven after `connect`, it was found in Books, not imported a second time
    org, kind, crm_id = unknown
    assert run.counters["books_records"][org][kind][crm_id] == 1
    assert "found in Books" in run.records[unknown]["detail"]


def test_a_throttled_token_endpoint_is_asked_once_and_the_imports_wait(run: Run) -> None:
    throttling = run.throttling
    token = throttling["refresh_token"]
    # The service asked for a token once, was refused, and then waited instead of spinning
    asked = run.counters["token_requests"]["by_refresh_token"][token]
    assert asked == throttling["burned"] + 1
    assert throttling["requests_after"][token] == asked
    assert run.counters["books_requests"][THROTTLED] == 0
    statuses = {c["connection"]: c["status"] for c in run.revocation["keeper"]["connections"]}
    assert statuses["throttled"] == "throttled"
    now = time.time()
    for key in run.groups["throttled"]:
        record = run.records[key]
        assert record["last_error"]["category"] == "auth", key
        assert "10 per 10 minutes" in record["last_error"]["message"]
        assert epoch(record["next_attempt_at"]) > now + 300, key  # Zoho's window, not a spin


def test_no_secret_reaches_the_logs(run: Run) -> None:
    assert len(run.log_lines) > 500  # the run was logged (every function, every import)
    assert len(run.secrets) > 10  # client secret, refresh tokens, access tokens, grant codes
    leaks = [
        (secret[:8], line[:200])
        for line in run.log_lines
        for secret in run.secrets
        if secret in line
    ]
    assert not leaks
