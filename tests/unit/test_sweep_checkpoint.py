"""The sweep's checkpoint on its own (`crm_to_books.checkpoint`): a model CRM listed as Zoho lists
it (If-Modified-Since strictly after, ascending Modified_Time, ties in an arbitrary order, pages
of a fixed size), walked by runs cut anywhere (record limits, a kill mid-page), with records
changing between runs. Whatever happens, every record's latest version is handled, and a version
is handled twice only when a run died before saving its page."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm_to_books.checkpoint import (
    MAX_ENCODED_BYTES,
    Checkpoint,
    CheckpointTooLarge,
    modified_second,
)


@dataclass
class ModelCrm:
    """id -> the second it was last modified."""

    records: dict[str, int] = field(default_factory=dict)

    def listing(self, since: str | None) -> list[tuple[str, int]]:
        after = datetime.fromisoformat(since).timestamp() if since else float("-inf")
        found = [(i, s) for i, s in self.records.items() if s > after]
        # Ties come in an order of the CRM's own: a hash, not the id.
        return sorted(found, key=lambda r: (r[1], zlib.crc32(r[0].encode())))


def run(
    crm: ModelCrm,
    checkpoint: Checkpoint,
    *,
    page: int,
    budget: int,
    now: int,
    die_after: int | None = None,
) -> tuple[Checkpoint, list[tuple[str, int]], bool]:
    """One sweep run: (the checkpoint it saved, what it handled, whether it died)."""
    handled: list[tuple[str, int]] = []
    listing = crm.listing(checkpoint.modified_since())
    started = now  # the walk's start
    found = 0
    for start in range(0, len(listing), page):
        prefix = []
        for crm_id, second in listing[start : start + page]:
            if checkpoint.handled(crm_id, second):
                prefix.append((crm_id, second))
                continue
            if found == budget:
                break
            if die_after is not None and len(handled) == die_after:
                return checkpoint, handled, True  # died before saving this page
            found += 1
            handled.append((crm_id, second))
            prefix.append((crm_id, second))
        checkpoint = checkpoint.advance(prefix, now - 5)
        if found == budget:
            return checkpoint, handled, False
    return checkpoint.close(started - 5), handled, False  # it reached the last change


def at(second: int) -> datetime:
    return datetime.fromtimestamp(second, UTC)


def test_a_tie_cut_by_a_page_edge_is_read_again_and_nothing_of_it_twice() -> None:
    crm = ModelCrm({f"{i}": 1000 for i in range(1, 451)})  # 450 records in one second
    checkpoint, first, _ = run(crm, Checkpoint(), page=200, budget=300, now=5000)
    assert len(first) == 300 and checkpoint.bound == 1000
    assert len(checkpoint.recent) == 300  # the boundary second's records, remembered
    checkpoint, second, _ = run(crm, checkpoint, page=200, budget=300, now=5000)
    assert sorted(first + second) == sorted(crm.records.items())


def test_the_bound_stays_behind_now_until_changes_have_settled() -> None:
    crm = ModelCrm({"1": 100, "2": 4998, "3": 4999})
    checkpoint, handled, _ = run(crm, Checkpoint(), page=200, budget=10, now=5000)
    assert len(handled) == 3
    assert checkpoint.bound == 4995  # not past now - 5: the last seconds stay in `recent`
    assert dict(checkpoint.recent) == {"2": 4998, "3": 4999}
    crm.records["4"] = 4997  # a change that became visible late, stamped earlier
    checkpoint, handled, _ = run(crm, checkpoint, page=200, budget=10, now=5002)
    assert handled == [("4", 4997)]


def test_a_walk_that_reached_the_end_closes_the_checkpoint_up_to_its_start() -> None:
    crm = ModelCrm({f"{i}": 1000 for i in range(1, 451)})
    checkpoint, _, _ = run(crm, Checkpoint(), page=200, budget=1000, now=5000)
    assert checkpoint.bound == 4995 and not checkpoint.recent
    assert crm.listing(checkpoint.modified_since()) == []  # the next run reads nothing again
    assert checkpoint.close(10) == checkpoint  # never back


def test_a_record_changed_again_is_handled_again() -> None:
    crm = ModelCrm({"1": 100, "2": 100})
    checkpoint, _, _ = run(crm, Checkpoint(), page=1, budget=10, now=5000)
    crm.records["1"] = 5001  # a change is stamped with the CRM's current second
    _, handled, _ = run(crm, checkpoint, page=1, budget=10, now=5002)
    assert handled == [("1", 5001)]


def test_the_bound_never_passes_a_record_listed_out_of_order() -> None:
    checkpoint = Checkpoint().advance([("1", 100), ("2", 300), ("3", 200)], 5000)
    assert checkpoint.bound == 200 and checkpoint.recent == {"2": 300, "3": 200}


def test_a_first_run_starts_at_the_start_or_reads_everything() -> None:
    assert Checkpoint.starting(None).modified_since() is None
    start = Checkpoint.starting(at(1_700_000_000))
    assert start.modified_since() == "2023-11-14T22:13:19+00:00"  # one second before: >= start


def test_it_survives_storage_and_refuses_what_would_not_fit() -> None:
    checkpoint = Checkpoint(1000, {str(3652397000001000000 + i): 1000 for i in range(20_000)})
    assert Checkpoint.decode(checkpoint.encode()) == checkpoint
    assert len(checkpoint.encode()) < 100_000  # one bulk change's ids compress well
    import random

    rng = random.Random(1)
    huge = Checkpoint(1000, {str(rng.randrange(10**18, 10**19)): 1000 for _ in range(60_000)})
    with pytest.raises(CheckpointTooLarge):
        assert len(huge.encode()) > MAX_ENCODED_BYTES


def test_modified_times_need_an_offset() -> None:
    assert modified_second("2025-01-01T05:30:00+05:30") == 1735689600
    assert modified_second("2025-01-01T00:00:00") is None
    assert modified_second(None) is None


@settings(max_examples=150, deadline=None)
@given(
    seconds=st.lists(st.integers(100, 140), min_size=1, max_size=120),
    page=st.integers(1, 25),
    budget=st.integers(1, 60),
    deaths=st.lists(st.integers(0, 30), max_size=4),
    changes=st.lists(st.tuples(st.integers(0, 119), st.integers(0, 3)), max_size=20),
)
def test_runs_cut_anywhere_lose_nothing_and_repeat_only_a_dead_page(
    seconds: list[int],
    page: int,
    budget: int,
    deaths: list[int],
    changes: list[tuple[int, int]],
) -> None:
    crm = ModelCrm({f"{i + 1}": s for i, s in enumerate(seconds)})
    now = 150
    checkpoint = Checkpoint()
    seen: list[tuple[str, int]] = []
    lost_to_deaths = 0
    runs = 0
    pending = list(changes)
    while True:
        runs += 1
        assert runs < 500
        die = deaths.pop(0) if deaths else None
        saved, handled, died = run(
            crm, checkpoint, page=page, budget=budget, now=now, die_after=die
        )
        seen += handled
        if died:
            # A dead run saved the pages before the one it died in: only that page's records
            # may be handled again.
            lost_to_deaths += page
        checkpoint = saved
        if pending:  # a record changes between runs, at the CRM's current second
            index, later = pending.pop(0)
            crm_id = f"{index % len(seconds) + 1}"
            now += later
            crm.records[crm_id] = now
            continue
        if not died and len(handled) < budget:
            break
    # Every record's latest version was handled ...
    assert set(crm.records.items()) <= set(seen)
    # ... and no version twice, except what a dead run had not saved.
    twice = len(seen) - len(set(seen))
    assert twice <= lost_to_deaths
