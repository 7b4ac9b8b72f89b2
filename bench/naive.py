"""Side by side: this service against a naive integration, same sandbox, same load, one run.

The naive integration is written the way typical integrations call Zoho: each container
refreshes its own access token when it starts (and again on a 401), there is no limiter shared
between containers, a 429 is retried with exponential back-off, and a timeout or a 5xx is
retried blindly (nothing checks whether the first request did the import). It stores the Books
id it got in DynamoDB (one `PutItem` per import), as an integration keeps its mapping.

Both run against an identical sandbox (the same seeded fault mix, Zoho's limit and latency,
compressed like `rate_limit`: 50 calls per 5 s window, 50 ms latency, 16 containers, one
organization, a backlog): 5xx answers after the commit, answers that never come (the read
times out after the commit), connections reset before sending. Books keeps a second record
when an import is sent twice (`reimport="duplicate"`, the worst case), so duplicates show.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import boto3
import requests

from bench.core import Options, Report
from bench.rate_limit import COMPRESSED, CONCURRENCY
from bench.world import NAMES, World, run_workers, world
from crm_to_books.entities import KINDS, get_entity
from crm_to_books.settings import Organization
from crm_to_books_cli.sandbox import SandboxConfig
from crm_to_books_cli.sandbox.testing import token_request

CONTAINERS = 16
READ_TIMEOUT = 1.0  # both sides: the sandbox's hang is longer
FAULTS: dict[str, Any] = {
    "seed": 13,
    "scope": "imports",
    "latency_seconds": COMPRESSED.latency,
    "fail_5xx_rate": 0.02,
    "fail_5xx_after_commit": True,
    "hang_after_commit_rate": 0.02,
    "hang_seconds": 2.0,
    "reset_before_rate": 0.02,
}
NAIVE_TRIES = 6


@dataclass
class NaiveRun:
    imported: int = 0
    gave_up: int = 0
    retries: Counter[str] = field(default_factory=Counter)


class NaiveContainer:
    """One container of the naive integration: its own token, its own retries."""

    def __init__(self, w: World, run: NaiveRun, lock: threading.Lock) -> None:
        self._w, self._run, self._lock = w, run, lock
        self._session = requests.Session()
        self._token: tuple[str, str] | None = None  # (access token, api domain)
        self._ddb: Any = boto3.client("dynamodb")

    def _refresh(self) -> tuple[str, str] | None:
        answer = token_request(self._w.sandbox, self._session)
        body = answer.json() if answer.ok else {}
        if "access_token" not in body:
            return None
        return body["access_token"], body["api_domain"]

    def run(self, kind: str, crm_id: str) -> bool:
        path = get_entity(kind).import_path(crm_id)
        for attempt in range(NAIVE_TRIES):
            backoff = min(0.25 * 2**attempt, 4.0) * random.uniform(0.5, 1.5)
            if self._token is None:
                self._token = self._refresh()
                if self._token is None:  # refused (too many token requests): back off, retry
                    self._count("token refused")
                    time.sleep(backoff)
                    continue
            token, api = self._token
            try:
                answer = self._session.post(
                    f"{api}{path}",
                    params={"organization_id": self._w.org},
                    headers={"Authorization": f"Zoho-oauthtoken {token}"},
                    timeout=(0.5, READ_TIMEOUT),
                )
            except requests.RequestException:
                self._count("timeout or reset")  # retried blindly
                continue
            if answer.status_code == 401:
                self._token = None
                continue
            if answer.status_code == 429 or answer.status_code >= 500:
                self._count(str(answer.status_code))
                time.sleep(backoff)
                continue
            if answer.ok:
                books_id = next(iter(answer.json().get("data", {}).values()), "")
                self._ddb.put_item(
                    TableName=NAMES.state_table,
                    Item={"pk": {"S": f"naive#{kind}#{crm_id}"}, "books_id": {"S": str(books_id)}},
                )
                return True
            return False
        return False

    def _count(self, what: str) -> None:
        with self._lock:
            self._run.retries[what] += 1


def _load(w: World, windows: int) -> list[tuple[str, str]]:
    return [(KINDS[n % 4], str(90_000 + n)) for n in range(COMPRESSED.rpm * (windows + 2))]


def _naive(w: World, windows: int, deadline: float) -> NaiveRun:
    run, lock = NaiveRun(), threading.Lock()
    todo = iter(_load(w, windows))

    def work() -> None:
        container = NaiveContainer(w, run, lock)  # a cold container: its own token
        while time.monotonic() < deadline:
            with lock:
                job = next(todo, None)
            if job is None:
                return
            ok = container.run(*job)
            with lock:
                run.imported += ok
                run.gave_up += not ok

    threads = [threading.Thread(target=work) for _ in range(CONTAINERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return run


def _side(options: Options, naive: bool) -> dict[str, Any]:
    windows = 3 if options.quick else 6
    limits = Organization(
        requests_per_minute=COMPRESSED.rpm, daily_limit=1_000_000, max_concurrency=CONCURRENCY
    )
    config = SandboxConfig(reimport="duplicate")
    with world(
        config,
        limits=limits,
        window=COMPRESSED.window,
        zoho_read_timeout=READ_TIMEOUT,
        zoho_connect_timeout=0.5,
        lookup_settle_seconds=2 * (READ_TIMEOUT + 0.5) + 0.5,
    ) as w:
        w.sandbox.set_faults(**FAULTS)
        w.calls.take()
        started = time.monotonic()
        deadline = started + windows * COMPRESSED.window
        if naive:
            got = _naive(w, windows, deadline)
            imported, retries = got.imported, dict(got.retries)
        else:
            importers = [w.importer() for _ in range(CONTAINERS)]
            requests_ = [w.request(kind, crm_id) for kind, crm_id in _load(w, windows)]
            drained = run_workers(importers, requests_, deadline)
            imported = drained.count("imported")
            retries = {"retry_later": drained.retries}
        elapsed = time.monotonic() - started
        w.sandbox.clear_faults()
        calls, _, _ = w.calls.take()
        counters = w.counters(window_seconds=COMPRESSED.window)
    org = w.org
    tokens = counters["token_requests"]
    books = counters["books_requests"].get(org, 0)
    refused = sum(counters["responses_429"].values())
    return {
        "imports": imported,
        "seconds": round(elapsed, 1),
        "token_requests": tokens["total"],
        "token_requests_refused": tokens["throttled"] + tokens["rejected"],
        "books_requests": books,
        "responses_429": refused,
        "limit_used": (books - refused) / (elapsed / COMPRESSED.window * COMPRESSED.rpm),
        "max_in_any_window": counters["max_requests_in_window"].get(org, 0),
        "duplicates": counters["duplicates"],
        "aws_calls_per_import": round(calls.total() / max(imported, 1), 2),
        "retries": retries,
    }


def run(options: Options) -> Report:
    report = Report("naive", "Side by side with a naive integration (same sandbox, load, faults)")
    naive, ours = _side(options, naive=True), _side(options, naive=False)
    report.details = {"naive": naive, "this service": ours}
    rows = (
        ("token requests", "token_requests", "{}"),
        ("429s received", "responses_429", "{}"),
        ("share of the limit used (accepted Books calls)", "limit_used", "{:.0%}"),
        ("Books duplicates under the fault mix", "duplicates", "{}"),
        ("AWS calls per import", "aws_calls_per_import", "{:g}"),
        ("imports done", "imports", "{}"),
    )
    for label, key, fmt in rows:
        report.add(
            f"{label}: naive / this service", f"{fmt.format(naive[key])} / {fmt.format(ours[key])}"
        )
    ratio = (naive["token_requests"] / max(ours["token_requests"], 1), naive["responses_429"])
    report.add(
        "headline",
        f"{ratio[0]:.0f}x the token requests, {naive['responses_429']} vs {ours['responses_429']} "
        f"429s, {naive['duplicates']} vs {ours['duplicates']} duplicates",
    )
    report.notes.append(
        f"{CONTAINERS} containers, {COMPRESSED.rpm} calls per {COMPRESSED.window:g} s window, "
        f"concurrency cap {CONCURRENCY}, faults {FAULTS}; naive retries: {naive['retries']}; "
        f"naive token requests refused by Zoho: {naive['token_requests_refused']}"
    )
    return report
