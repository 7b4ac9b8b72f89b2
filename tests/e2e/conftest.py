"""End-to-end fixtures: the local stack, started once per session, driven from the outside.

- `local_stack`: the real handlers (functions/) and the real Zoho sandbox, with queue timings
  compressed for tests. Drive it over HTTP (`local_stack.api_url`) and SQS/EventBridge
  (`local_stack.client("sqs")`, `local_stack.queue_urls[kind]`); the sandbox is
  `local_stack.sandbox` (faults, counters), container output is in `local_stack_logs`.
- `fake_stack`: the same machinery with fake handlers (tests/e2e/fixtures), for testing the
  local stack itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_to_books_cli.local import LocalStack
from crm_to_books_cli.local.stack import REPO_ROOT
from crm_to_books_cli.sandbox import SandboxConfig, ZohoSandbox
from crm_to_books_cli.sandbox.config import DEFAULT_ORGANIZATIONS, Organization
from tests.e2e.helpers import (
    MAX_RECEIVE_COUNT,
    THROTTLED_ORG,
    VISIBILITY_TIMEOUT,
    FakeSandbox,
    Logs,
)

FIXTURES = Path(__file__).parent / "fixtures"
LAYER = REPO_ROOT / "layers" / "core" / "python"
THROTTLED = Organization(
    organization_id=THROTTLED_ORG,
    name="Sandbox Throttled (one call a minute)",
    sync_modes=("accounts_and_contacts", "vendors", "products"),
    requests_per_minute=1,
)


def _assert_no_container_left(stack: LocalStack, pids: list[int]) -> None:
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert not alive, f"containers left running after stop(): {alive}"
    assert not stack.container_pids()


@pytest.fixture(scope="session")
def fake_stack_logs() -> Logs:
    return Logs()


@pytest.fixture(scope="session")
def fake_stack(fake_stack_logs: Logs) -> Iterator[LocalStack]:
    stack = LocalStack(
        prefix="e2e-fake",
        api_port=0,
        aws_port=0,
        functions_root=FIXTURES / "functions",
        layer_dirs=(LAYER, FIXTURES / "layer"),
        sandbox=FakeSandbox(),
        visibility_timeout=VISIBILITY_TIMEOUT,
        max_receive_count=MAX_RECEIVE_COUNT,
        batching_window=1.0,
        schedule_seconds={"token-keeper": 1.0},  # redrive keeps its 5 minutes: fired by hand
        log_sink=fake_stack_logs,
        iam_record=False,  # what fake functions call is not what the service's roles need
    )
    with stack:
        yield stack
        pids = stack.container_pids()
    _assert_no_container_left(stack, pids)


@pytest.fixture(scope="session")
def local_stack_logs() -> Iterator[Logs]:
    """Every container line of the session; kept in the file `E2E_LOGS` names, if set (a failed
    run's evidence: what each function did, with times)."""
    logs = Logs()
    yield logs
    if path := os.environ.get("E2E_LOGS"):
        Path(path).write_text("".join(f"{function}\t{line}\n" for function, line in logs.all()))


@pytest.fixture(scope="session")
def local_stack(local_stack_logs: Logs) -> Iterator[LocalStack]:
    """The service's own handlers against the Zoho sandbox, on free ports."""
    stack = LocalStack(
        prefix="e2e",
        api_port=0,
        aws_port=0,
        visibility_timeout=VISIBILITY_TIMEOUT,
        max_receive_count=MAX_RECEIVE_COUNT,
        batching_window=0.5,
        # A killed attempt's record is taken over once its lease runs out, and an unknown
        # outcome is looked up once Zoho could no longer be committing it: compressed here like
        # the queue timings (still longer than any attempt, or call, against the sandbox).
        settings={
            "attempt_lease_seconds": 15.0,
            "zoho_read_timeout": 5.0,
            "lookup_settle_seconds": 10.0,
        },
        log_sink=local_stack_logs,
        # The tests import any id they make up: every well-formed id is a CRM record.
        sandbox=ZohoSandbox(
            port=0,
            config=SandboxConfig(
                auto_create_crm_records=True, organizations=(*DEFAULT_ORGANIZATIONS, THROTTLED)
            ),
        ),
    )
    with stack:
        yield stack
        pids = stack.container_pids()
    _assert_no_container_left(stack, pids)
