"""The local Lambda runtime on its own: containers, warm reuse, scaling, timeouts, errors."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from crm_to_books_cli.local.runtime import FunctionConfig, FunctionPool, RuntimeStopped
from tests.e2e.helpers import Logs, wait_until

HANDLER = """
import os, time

print("cold start", flush=True)

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    if event.get("unserializable"):
        return {1, 2}
    return {
        "pid": os.getpid(),
        "remaining_ms": context.get_remaining_time_in_millis(),
        "request_id": context.aws_request_id,
        "secret_env": os.environ.get("ONLY_HERE"),
    }
"""


def make_pool(tmp_path: Path, code: str, logs: Logs, **config: object) -> FunctionPool:
    code_dir = tmp_path / "fn"
    code_dir.mkdir()
    (code_dir / "handler.py").write_text(textwrap.dedent(code))
    settings: dict[str, object] = {
        "name": "fn",
        "code_dir": code_dir,
        "layer_dirs": (),
        "environment": {"PATH": os.environ["PATH"], "ONLY_HERE": "yes"},
        "timeout_seconds": 2,
        "memory_mb": 128,
        "arn": "arn:aws:lambda:us-east-1:123456789012:function:fn",
        **config,
    }
    return FunctionPool(FunctionConfig(**settings), logs)  # type: ignore[arg-type]


@pytest.fixture
def logs() -> Logs:
    return Logs()


@pytest.fixture
def pool(tmp_path: Path, logs: Logs) -> Iterator[FunctionPool]:
    pool = make_pool(tmp_path, HANDLER, logs, max_containers=2)
    yield pool
    pids = pool.pids()
    pool.stop()
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]


def test_a_warm_container_serves_the_next_invocation(pool: FunctionPool, logs: Logs) -> None:
    first, second = pool.invoke({}), pool.invoke({})

    assert first.ok and second.ok
    assert first.result["pid"] == second.result["pid"] != os.getpid()
    assert first.result["secret_env"] == "yes"  # the function's environment, not ours
    assert 0 < first.result["remaining_ms"] <= 2000
    assert first.result["request_id"] == first.request_id != second.request_id
    assert wait_until(lambda: logs.lines("fn"), "the init output") == ["cold start"]


def test_concurrent_invocations_scale_out_up_to_the_maximum(pool: FunctionPool) -> None:
    with ThreadPoolExecutor(4) as threads:
        results = list(threads.map(lambda _: pool.invoke({"sleep": 0.3}), range(4)))

    assert all(r.ok for r in results)
    assert len({r.result["pid"] for r in results}) == 2  # max_containers: the rest waited
    assert len(pool.pids()) == 2


def test_a_timed_out_invocation_fails_and_its_container_is_replaced(pool: FunctionPool) -> None:
    slow = pool.invoke({"sleep": 30})

    assert not slow.ok
    assert slow.error["errorType"] == "Sandbox.Timedout"  # type: ignore[index]
    assert "Task timed out after 2.00 seconds" in slow.error["errorMessage"]  # type: ignore[index]
    assert pool.pids() == []
    assert pool.invoke({}).ok


def test_errors_come_back_in_lambdas_shape(pool: FunctionPool, logs: Logs) -> None:
    unserializable = pool.invoke({"unserializable": True})

    assert unserializable.error is not None
    assert unserializable.error["errorType"] == "Runtime.MarshalError"
    wait_until(
        lambda: any("Runtime.MarshalError" in line for line in logs.lines("fn")),
        "the error on the function's log",
    )


def test_a_handler_that_cannot_be_imported_fails_each_invocation(
    tmp_path: Path, logs: Logs
) -> None:
    pool = make_pool(tmp_path, "import not_a_module\n", logs)
    try:
        invocation = pool.invoke({})
    finally:
        pool.stop()

    assert invocation.error is not None
    assert invocation.error["errorType"] == "Runtime.ImportModuleError"
    assert "not_a_module" in invocation.error["errorMessage"]
    assert pool.pids() == []


def test_a_stopped_pool_refuses_invocations(pool: FunctionPool) -> None:
    pool.stop()

    with pytest.raises(RuntimeStopped):
        pool.invoke({})
