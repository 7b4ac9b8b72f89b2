"""What a batch's lanes (one thread per organization, `batch.ParallelBatchProcessor`) share in
one container: one organization's or connection's slow call never holds up another's, no metric
value is lost, and no output line is cut by another lane's."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from aws_lambda_powertools.metrics import MetricUnit, single_metric

from crm_to_books.limiter import RateLimiter
from crm_to_books.observability import logger, metrics, output_lock
from crm_to_books.settings import Organization, Settings
from crm_to_books.tokens import TokenProvider

SLOW = "limiter#1"


class _Held:
    """A DynamoDB stand-in whose calls for `slow` keys wait until released."""

    def __init__(self, slow: str, item: dict[str, Any] | None = None) -> None:
        self.slow, self.item = slow, item or {}
        self.entered, self.release = threading.Event(), threading.Event()

    def get_item(self, TableName: str, Key: dict[str, Any], **_: Any) -> dict[str, Any]:
        if Key["pk"]["S"] == self.slow:
            self.entered.set()
            assert self.release.wait(10)
            return {}
        return self.item


def _while_held(held: _Held, slow: Callable[[], Any], other: Callable[[], Any]) -> bool:
    """Whether `other` finishes while `slow` is held inside its DynamoDB call."""
    first = threading.Thread(target=slow)
    first.start()
    try:
        assert held.entered.wait(10)
        second = threading.Thread(target=other)
        second.start()
        second.join(5)
        return not second.is_alive()
    finally:
        held.release.set()
        first.join(10)


def test_one_organizations_slow_limiter_call_does_not_hold_up_another() -> None:
    held = _Held(SLOW)
    limiter = RateLimiter("state", client=held)

    done = _while_held(
        held,
        lambda: limiter.crowded("1", Organization()),
        lambda: limiter.crowded("2", Organization()),
    )

    assert done


def test_one_connections_slow_token_read_does_not_hold_up_another() -> None:
    token = {"access_token": "t", "expires_at": 4_000_000_000.0, "api_domain": "https://b"}
    held = _Held(
        "token#X",
        {"Item": {"pk": {"S": "token#Y"}, **{k: _ddb(v) for k, v in token.items()}}},
    )
    settings = Settings(
        ledger_table="ledger",
        state_table="state",
        organizations={"1": Organization(connection="X"), "2": Organization(connection="Y")},
        connections={"X": "sx", "Y": "sy"},
    )
    tokens = TokenProvider(settings, zoho=None, client=held)  # type: ignore[arg-type]
    got: list[Any] = []

    done = _while_held(held, lambda: _quietly(tokens.get, "X"), lambda: got.append(tokens.get("Y")))

    assert done and got[0].value == "t"


def _ddb(value: Any) -> dict[str, str]:
    return {"N": str(value)} if isinstance(value, float) else {"S": str(value)}


def _quietly(call: Callable[[str], Any], arg: str) -> None:
    try:
        call(arg)
    except Exception:
        return


def test_lanes_adding_a_metric_at_once_lose_no_value() -> None:
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for _ in range(100):
            metrics.metric_set.clear()
            gate = threading.Barrier(8)

            def add(gate: threading.Barrier = gate) -> None:
                gate.wait()
                metrics.add_metric(name="ImportSucceeded", unit="Count", value=1)

            threads = [threading.Thread(target=add) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(metrics.metric_set["ImportSucceeded"]["Value"]) == 8
    finally:
        sys.setswitchinterval(switch)
        metrics.metric_set.clear()


class _Unbuffered(io.StringIO):
    """Lambda's stdout: each write flushed at once (`print` writes a line and its newline
    apart)."""

    def write(self, text: str) -> int:
        written = super().write(text)
        self.flush()
        return written


def test_an_emf_line_printed_under_the_output_lock_is_never_cut_by_a_log_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = _Unbuffered()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(logger.registered_handler, "stream", out)
    level = logger.log_level  # another suite may have raised it
    logger.setLevel(logging.INFO)
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    gate = threading.Barrier(6)

    def lane(n: int) -> None:
        gate.wait()
        for _ in range(40):
            if n % 2:
                with (
                    output_lock(),
                    single_metric(
                        name="Imports", unit=MetricUnit.Count, value=1, namespace="probe"
                    ) as metric,
                ):
                    metric.add_dimension(name="kind", value="account")
            else:
                logger.info("import done")

    try:
        threads = [threading.Thread(target=lane, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
        logger.setLevel(level)
    lines = out.getvalue().splitlines()
    assert len(lines) == 6 * 40
    assert all(json.loads(line) for line in lines)
