"""The functional tests' engine calls AWS with the role of the function it plays
(tests/support/iam.py): taking `dynamodb:DeleteItem` from the import functions makes the named
scenario fail with AccessDeniedException, and it passes with the real role."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import boto3
import pytest
from botocore.exceptions import ClientError

from crm_to_books import topology
from crm_to_books.models import ImportRequest, Status
from crm_to_books.pipeline import Importer
from crm_to_books_cli.sandbox import ZohoSandbox
from tests.functional.conftest import NAMES, ORG
from tests.support.iam import ROOT, InProcess

# A synchronous import rate-limited on a new record: `Ledger.abandon` deletes the record.
SCENARIO = (
    "tests/functional/test_handlers_importer.py::test_zoho_throttling_is_a_429_with_retry_after"
)


def pytest_session(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finished(session: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    stdout, _ = session.communicate(timeout=240)
    return subprocess.CompletedProcess(session.args, session.returncode, stdout)


def test_without_delete_item_the_rate_limited_sync_import_fails_with_access_denied() -> None:
    # The named test in two sessions of its own, at once: without DeleteItem, and as deployed
    revoking = pytest_session(SCENARIO, "--iam-revoke", "importer=dynamodb:DeleteItem")
    as_deployed = pytest_session(SCENARIO)
    revoked, real = finished(revoking), finished(as_deployed)

    assert revoked.returncode == 1, revoked.stdout
    assert "1 failed" in revoked.stdout
    assert "assert 500 == 429" in revoked.stdout  # a 500 where the caller should be told 429
    denied = (
        "(AccessDeniedException) when calling the TransactWriteItems operation: User: "
        "arn:aws:sts::123456789012:assumed-role/"
    )
    assert denied in revoked.stdout
    assert (
        "is not authorized to perform: dynamodb:DeleteItem on resource: "
        f"arn:aws:dynamodb:us-east-1:123456789012:table/{NAMES.ledger_table} because no "
        "identity-based policy allows the dynamodb:DeleteItem action"
    ) in revoked.stdout
    assert real.returncode == 0, real.stdout
    assert "1 passed" in real.stdout


def request(kind: str, crm_id: str) -> ImportRequest:
    return ImportRequest(kind=kind, organization_id=ORG, crm_id=crm_id)


@pytest.mark.iam(plays="status_api", record=False)  # refused on purpose
def test_code_playing_a_function_may_do_only_what_its_role_allows(
    new_importer: Callable[..., Importer], sandbox: ZohoSandbox, iam: InProcess
) -> None:
    if not iam.active:
        pytest.skip("--no-iam")
    importer = new_importer()
    crm_id = sandbox.crm_ids["item"][0]

    # The status API's role reads the ledger, not the limiter: an import made as the status API
    # is refused at its first call (a queued import first reads its organization's limiter
    # item), with the message AWS gives
    with pytest.raises(ClientError) as refused:
        importer.run(request("item", crm_id))
    error = refused.value.response["Error"]
    assert error["Code"] == "AccessDeniedException"
    status_api = NAMES.function(topology.STATUS_API)
    assert f"/{status_api} is not authorized to perform: dynamodb:GetItem" in error["Message"]
    assert importer.ledger.get(ORG, "item", crm_id) is None  # nothing half-written

    # Nor may it write: a synchronous import (which leases the record first) is refused there
    with pytest.raises(ClientError) as refused:
        importer.run(request("item", crm_id), sync=True)
    error = refused.value.response["Error"]
    assert f"/{status_api} is not authorized to perform: dynamodb:UpdateItem" in error["Message"]

    # As an import function, the same code may import; the status API may read what it did
    with iam.playing("importer"):
        assert importer.run(request("item", crm_id)).result == "imported"
    record = importer.ledger.get(ORG, "item", crm_id)
    assert record is not None and record.status is Status.SUCCEEDED


@pytest.mark.iam(plays="status_api")
def test_a_tests_own_calls_and_set_up_pass_unchecked(
    new_importer: Callable[..., Importer], sandbox: ZohoSandbox, iam: InProcess
) -> None:
    key = {"pk": {"S": f"ORG#{ORG}"}, "sk": {"S": "item#1"}}
    # A test's own calls (no runtime-library code makes them) are nobody's
    boto3.client("dynamodb").put_item(TableName=NAMES.ledger_table, Item=key)

    # Engine code a test runs for its own set-up may be let through on purpose
    with iam.off():
        done = new_importer().run(request("item", sandbox.crm_ids["item"][1]))
    assert done.result == "imported"
