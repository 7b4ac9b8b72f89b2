"""CRM sweeps against moto and the Zoho sandbox's CRM: every matching record queued (and then
imported) exactly once, nothing lost to ties, page edges, kills, changes mid-run, overlapping
runs, 429s or a missing scope."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from crm_to_books.crm_sync import CrmSync
from crm_to_books.settings import Settings, Sync
from crm_to_books.sweep import SweepResult, passes
from crm_to_books.tokens import TokenProvider
from crm_to_books.zoho import ZohoClient
from crm_to_books_cli.sandbox import ZohoSandbox
from tests.functional.conftest import ORG, OffsetClock, put_connection
from tests.functional.crm_world import books_records, crm_settings, import_all, queued, sources
from tests.support.iam import InProcess

CUSTOMERS = {"Account_Type": ("Customer", "Reseller")}
# One bulk account in eight is a customer (the seeded three: a customer, a reseller, a prospect).
TYPES = ("Customer", "Prospect", "Partner", "Investor", "Press", "Analyst", "Competitor", "Other")
SYNC = Sync(organization_id=ORG, kind="account", filter=CUSTOMERS)


# The engine here is the sweep function's (the hook's calls go through its handler, imports
# through crm_world.import_all): each call is checked against that function's role.
pytestmark = pytest.mark.iam(plays="sweep")


class Killed(BaseException):
    """A Lambda container killed mid-run: nothing of the run's own clean-up happens."""


class KillingSqs:
    """SQS that dies (like its container) after `after` messages."""

    def __init__(self, after: int) -> None:
        self.real = boto3.client("sqs")
        self.left = after

    def send_message(self, **kwargs: Any) -> Any:
        self.left -= 1
        if self.left < 0:
            raise Killed
        return self.real.send_message(**kwargs)


@pytest.fixture
def crm(settings: Settings, sandbox: ZohoSandbox) -> Settings:
    return crm_settings(settings, sandbox, SYNC)


@pytest.fixture
def sweep(crm: Settings, clock: OffsetClock) -> Callable[..., SweepResult]:
    """One sweep in a fresh container (sleeping moves the test's clock: back-offs pass at once)."""

    def run(time_limit: float = 240.0, sqs: Any = None, **options: Any) -> SweepResult:
        engine = CrmSync(crm, clock=clock, sleep=clock.advance, sqs=sqs)
        sync = crm.sync(options.pop("organization_id", ORG), options.pop("kind", "account"))
        sync = sync.model_copy(update=options) if options else sync
        return engine.sweeper.run(sync, time_limit=time_limit, since=options.get("since"))

    return run


def create_accounts(sandbox: ZohoSandbox, count: int) -> list[dict[str, Any]]:
    """`count` accounts created in one call (so in one or two seconds: ties across pages), one
    in eight a customer; and every account the CRM has."""
    sandbox.crm.create_records(
        "Accounts",
        [{"Account_Name": f"Bulk {i}", "Account_Type": TYPES[i % 8]} for i in range(count)],
    )
    return sandbox.crm.records("Accounts")


@pytest.fixture
def accounts(sandbox: ZohoSandbox) -> Iterator[list[dict[str, Any]]]:
    yield create_accounts(sandbox, 800)


def matching(records: list[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in records if passes(r, CUSTOMERS)}


def test_a_sweep_queues_each_matching_record_once_and_a_second_run_queues_nothing(
    sweep: Callable[..., SweepResult],
    crm: Settings,
    sandbox: ZohoSandbox,
    aws_world: dict[str, Any],
    iam: InProcess,
) -> None:
    accounts = create_accounts(sandbox, 3000)
    wanted = matching(accounts)
    assert len(wanted) == 377  # 375 bulk customers, 2 seeded

    first = sweep()

    assert first.complete and first.stopped is None
    assert (first.found, first.queued, first.filtered, first.already_imported) == (
        3003,
        377,
        2626,
        0,
    )
    assert first.crm_calls == 16  # 3,003 records, 200 a page: one CRM credit per page
    on_queue = queued(aws_world["queue_urls"]["account"])
    assert set(on_queue) == wanted and set(on_queue.values()) == {1}
    # Every import goes through the kind's queue: imported once each, as the function would.
    import_all(iam, crm, "account", on_queue)
    made = books_records(sandbox, "account")
    assert set(made) == wanted and set(made.values()) == {1}

    second = sweep()

    assert second.complete
    assert (second.found, second.queued) == (0, 0)
    assert not queued(aws_world["queue_urls"]["account"])
    # From the beginning again (`--since`): everything found is answered by the ledger.
    again = sweep(since=first_second(accounts))
    assert (again.found, again.queued, again.already_imported) == (3000, 0, 375)
    # The checkpoint only moves on (to the records' last second once it has settled).
    assert again.since and second.checkpoint and first.checkpoint
    assert second.checkpoint >= first.checkpoint


def first_second(records: list[dict[str, Any]]) -> Any:
    from datetime import datetime

    bulk = [r for r in records if str(r.get("Account_Name", "")).startswith("Bulk")]
    return min(datetime.fromisoformat(r["Modified_Time"]) for r in bulk)


def test_runs_cut_by_max_records_inside_one_second_lose_and_repeat_nothing(
    sweep: Callable[..., SweepResult], accounts: list[dict[str, Any]], aws_world: dict[str, Any]
) -> None:
    runs = []
    while not (runs and runs[-1].complete):
        runs.append(sweep(max_records_per_run=350))  # cuts pages and the tie group anywhere
        assert len(runs) < 20
    assert [r.found for r in runs] == [350, 350, 103]
    assert all(r.stopped == "max_records" for r in runs[:-1])
    on_queue = queued(aws_world["queue_urls"]["account"])
    assert set(on_queue) == matching(accounts) and set(on_queue.values()) == {1}


def test_a_sweep_killed_mid_run_resumes_without_gaps_and_imports_nothing_twice(
    sweep: Callable[..., SweepResult],
    accounts: list[dict[str, Any]],
    crm: Settings,
    sandbox: ZohoSandbox,
    clock: OffsetClock,
    aws_world: dict[str, Any],
    iam: InProcess,
) -> None:
    with pytest.raises(Killed):
        sweep(sqs=KillingSqs(after=60))  # dies in its third page, holding the lease

    blocked = sweep()  # the dead run's lease has not run out yet
    assert blocked.stopped == "busy" and blocked.found == 0
    clock.advance(180)  # past the dead run's lease
    resumed = sweep()

    assert resumed.complete
    on_queue = queued(aws_world["queue_urls"]["account"])
    assert set(on_queue) == matching(accounts)  # no gap
    sent_twice = [crm_id for crm_id, n in on_queue.items() if n > 1]
    assert len(sent_twice) <= 25  # at most the page in flight when it died (25 customers)
    import_all(iam, crm, "account", list(on_queue.elements()))
    made = books_records(sandbox, "account")
    assert set(made.values()) == {1}  # no duplicate in Books
    assert sandbox.counters()["duplicates"] == 0


def test_records_changed_during_a_run_are_found_by_the_next(
    sweep: Callable[..., SweepResult],
    accounts: list[dict[str, Any]],
    sandbox: ZohoSandbox,
    aws_world: dict[str, Any],
) -> None:
    bulk = sorted(
        (r for r in accounts if passes(r, CUSTOMERS)), key=lambda r: r["id"]
    )  # some already listed when they change, some not yet
    changed = [bulk[0]["id"], bulk[50]["id"], bulk[-1]["id"]]
    prospect = next(r["id"] for r in accounts if r["Account_Type"] == "Prospect")

    class ChangingSqs:
        real = boto3.client("sqs")
        sent = 0

        def send_message(self, **kwargs: Any) -> Any:
            self.sent += 1
            if self.sent == 40:  # mid-run, in the CRM's next second
                time.sleep(1.05)
                for crm_id in changed:
                    sandbox.crm.update_record("Accounts", crm_id, Phone="555")
                sandbox.crm.update_record("Accounts", prospect, Account_Type="Customer")
            return self.real.send_message(**kwargs)

    first = sweep(sqs=ChangingSqs())
    assert first.complete
    queue = aws_world["queue_urls"]["account"]
    first_queued = queued(queue)
    time.sleep(1.05)  # the next run starts in a later second

    second = sweep()

    assert second.complete
    again = queued(queue)
    # The changed records come again (queued: not imported yet) and the prospect that became a
    # customer is queued for the first time; nothing else.
    assert set(again) <= {*changed, prospect} and prospect in {*first_queued, *again}
    assert set(first_queued) | set(again) == matching(sandbox.crm.records("Accounts"))


def test_two_overlapping_runs_never_both_advance_the_checkpoint(
    sweep: Callable[..., SweepResult],
    accounts: list[dict[str, Any]],
    crm: Settings,
    clock: OffsetClock,
) -> None:
    holder = CrmSync(crm, clock=clock)
    assert holder.sweeper.store.begin(SYNC) is not None  # a run in progress

    other = sweep()

    assert other.stopped == "busy" and (other.found, other.queued) == (0, 0)
    clock.advance(180)  # the first outlived its lease: a new run takes over ...
    taken_over = sweep()
    assert taken_over.complete and taken_over.queued == 102
    # ... and the first can no longer write the checkpoint.
    from crm_to_books.checkpoint import Checkpoint

    assert holder.sweeper.store.save(SYNC, Checkpoint()) is False
    assert sweep().found == 0


def test_a_run_stops_when_its_time_is_nearly_up_and_the_next_continues(
    sweep: Callable[..., SweepResult],
    accounts: list[dict[str, Any]],
    clock: OffsetClock,
    aws_world: dict[str, Any],
) -> None:
    class SlowSqs:
        """Each message takes a second of the run's time."""

        real = boto3.client("sqs")

        def send_message(self, **kwargs: Any) -> Any:
            clock.advance(1.0)
            return self.real.send_message(**kwargs)

    # 70 s: no page starts with less than 30 s left, and a page of 200 queues about 25.
    first = sweep(time_limit=70, sqs=SlowSqs())

    assert first.stopped == "time_limit" and not first.complete and not first.failed
    assert first.found == 400 and first.checkpoint is not None
    rest = sweep()
    assert rest.complete and rest.found == 803 - 400
    on_queue = queued(aws_world["queue_urls"]["account"])
    assert set(on_queue) == matching(accounts) and set(on_queue.values()) == {1}


def test_sweeps_sharing_a_crm_organization_call_it_one_at_a_time(
    crm: Settings, accounts: list[dict[str, Any]], sandbox: ZohoSandbox
) -> None:
    sandbox.crm.create_records("Contacts", [{"Last_Name": f"Bulk {i}"} for i in range(600)])
    # Zoho would refuse a second call in flight; each call takes a while, so two unguarded
    # sweeps would overlap.
    sandbox.crm.configure(max_concurrency=1)
    sandbox.crm.set_faults(latency_seconds=0.05)
    results: dict[str, SweepResult] = {}

    def run(kind: str) -> None:  # two containers, the real clock
        results[kind] = CrmSync(crm).sweeper.run(crm.sync(ORG, kind), time_limit=120)

    threads = [threading.Thread(target=run, args=(kind,)) for kind in ("account", "contact")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert results["account"].complete and results["contact"].complete
    assert results["account"].found == 803 and results["contact"].found >= 600
    counters = sandbox.crm.counters()
    assert counters["max_concurrency_seen"] == 1
    assert sum(counters["responses_429"].values()) == 0
    sandbox.crm.clear_faults()


def test_a_sweep_waits_out_crm_429s_without_touching_the_books_limit(
    sweep: Callable[..., SweepResult], accounts: list[dict[str, Any]], sandbox: ZohoSandbox
) -> None:
    sandbox.crm.set_faults(fail_429_next=3)
    books_before = sum(sandbox.counters()["books_requests"].values())

    result = sweep()

    assert result.complete and result.queued == 102
    assert sandbox.crm.counters()["responses_429"]["injected"] == 3
    assert sum(sandbox.counters()["books_requests"].values()) == books_before


def test_a_crm_that_keeps_refusing_ends_the_run_with_its_checkpoint_kept(
    sweep: Callable[..., SweepResult], accounts: list[dict[str, Any]], sandbox: ZohoSandbox
) -> None:
    sandbox.crm.set_faults(fail_429_rate=1.0)

    result = sweep(time_limit=120)

    assert result.stopped == "rate_limited" and result.failed
    assert "429" in (result.message or "") and result.found == 0
    sandbox.crm.clear_faults()


def test_a_missing_crm_scope_is_a_clear_message_not_a_broken_connection(
    sweep: Callable[..., SweepResult],
    crm: Settings,
    sandbox: ZohoSandbox,
) -> None:
    code = sandbox.issue_grant_code(scope="ZohoBooks.fullaccess.all")
    refresh, _ = ZohoClient().exchange_grant_code(
        sandbox.url, sandbox.client_id, sandbox.client_secret, code
    )
    put_connection(sandbox, refresh_token=refresh)

    result = sweep()

    assert result.stopped == "scope_missing"
    assert "ZohoCRM.modules.accounts.READ" in (result.message or "")
    assert "crm-to-books connect" in (result.message or "")
    state = TokenProvider(crm, ZohoClient()).state("default")
    assert not state.broken
    assert set(state.missing_scopes) == {"ZohoCRM.modules.accounts.READ"}


def test_the_first_run_starts_at_the_syncs_start(
    sweep: Callable[..., SweepResult], accounts: list[dict[str, Any]], aws_world: dict[str, Any]
) -> None:
    result = sweep(start=first_second(accounts))

    assert result.complete and result.found == 800  # not the three seeded three days ago
    assert Counter(sources(aws_world["queue_urls"]["account"])) == {"schedule": 10}
