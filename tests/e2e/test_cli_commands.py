"""The operator CLI against the local stack, run in-process: import, bulk, status, failures,
redrive and connect, each checked against what the service and the sandbox then hold."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_to_books.entities import KINDS
from crm_to_books_cli import api_client
from crm_to_books_cli.commands.connect import SCOPES
from crm_to_books_cli.local import LocalStack
from crm_to_books_cli.main import main
from tests.e2e.test_service_imports import (
    assert_imported_once,
    new_id,
    org,
    record,
    wait_for_status,
    zoho_imports,
)

pytestmark = pytest.mark.timeout(60)


class Cli:
    """`crm-to-books ...` pointed at the local stack; answers (exit code, stdout, stderr)."""

    def __init__(self, stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
        self.stack, self.capsys = stack, capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main(
            [
                *argv,
                "--api-url",
                self.stack.api_url,
                "--aws-endpoint",
                self.stack.aws_endpoint,
                "--prefix",
                self.stack.names.prefix,
            ]
        )
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(
    local_stack: LocalStack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    monkeypatch.setenv("COLUMNS", "250")  # rich tables on one line each, for the assertions
    return Cli(local_stack, capsys)


def test_import_prints_the_outcome_and_exits_by_it(cli: Cli, local_stack: LocalStack) -> None:
    organization_id, crm_id = org(local_stack), new_id()
    sandbox = local_stack.sandbox
    assert sandbox is not None

    # Imported: exit 0, the Books id
    code, out, _ = cli("import", "item", crm_id, "--org", organization_id)
    assert code == 0, out
    books_id = record(local_stack, "item", crm_id, organization_id)["books_id"]  # type: ignore[index]
    assert (
        f"succeeded: item {crm_id} in organization {organization_id} is item_id {books_id}" in out
    )

    # Refused by Zoho: exit 1, with Zoho's code and message and what to do
    missing = sandbox.crm_ids["missing"]
    code, out, _ = cli("import", "account", missing, "--org", organization_id)
    assert code == 1
    assert "failed: account" in out
    assert (
        "Zoho said: Zoho code 1002, HTTP 400: The record does not exist in Zoho CRM Accounts" in out
    )
    assert f"crm-to-books import account {missing} --org {organization_id}" in out

    # Zoho down: exit 3, queued for retry with Retry-After; the service then finishes it
    later = new_id()
    sandbox.set_faults(fail_5xx_next=1, scope="imports")  # type: ignore[attr-defined]
    code, out, _ = cli("import", "contact", later, "--org", organization_id)
    assert code == 3, out
    assert "queued for retry:" in out and "Retry-After:" in out
    wait_for_status(local_stack, "contact", later, organization_id, "succeeded", timeout=30)

    # --async: queued (exit 0); --json: the API's body as is
    queued = new_id()
    code, out, _ = cli("import", "vendor", queued, "--org", organization_id, "--async", "--json")
    assert code == 0
    assert json.loads(out)["import"]["status"] == "queued"
    wait_for_status(local_stack, "vendor", queued, organization_id, "succeeded")

    # Bad input never reaches the service: one line naming the field, exit 2
    code, _, err = cli("import", "account", "12345678901234567890", "--org", organization_id)
    assert (code, err) == (
        2,
        "crm-to-books import: crm_id: must be a string of 1 to 19 digits, "
        "got '12345678901234567890'\n",
    )
    code, _, err = cli("import", "account", crm_id, "--org", "999")
    assert code == 2
    assert err == (
        "crm-to-books import: HTTP 403: organization_id: 999 is not configured for this service\n"
    )


def test_bulk_reports_bad_rows_imports_the_good_ones_and_sums_up(
    cli: Cli, local_stack: LocalStack, tmp_path: Path
) -> None:
    sandbox = local_stack.sandbox
    assert sandbox is not None
    organization_id, accounts_only = sandbox.organizations[0], sandbox.organizations[1]
    good = {kind: [new_id(), new_id()] for kind in KINDS}
    missing = sandbox.crm_ids["missing"]
    wrong_mode = new_id()
    lines = [
        "kind,organization_id,crm_id",
        *(f"{kind},{organization_id},{crm_id}" for kind, ids in good.items() for crm_id in ids[:1]),
        f"account,{organization_id},12345678901234567890",  # line 6
        f"invoice,{organization_id},1",  # line 7
        f"item,{organization_id}",  # line 8
        "",
        f"vendor,999,{new_id()}",  # line 10
        f"account,{organization_id},{good['account'][0]}",  # line 11: duplicate of line 2
        f"account,{organization_id},{missing}",  # line 12: no such CRM record
        f"contact,{accounts_only},{wrong_mode}",  # line 13: the organization syncs accounts only
        *(f" {kind} , {organization_id} , {ids[1]} " for kind, ids in good.items()),
    ]
    csv_file = tmp_path / "imports.csv"
    csv_file.write_text("\n".join(lines) + "\n")

    code, out, err = cli("bulk", str(csv_file), "--timeout", "40", "--poll-interval", "0.2")

    # Then each bad row is named by line and reason, and skipped
    assert code == 1
    reported = [line for line in err.splitlines() if ": line " in line]
    assert reported == [
        f"{csv_file}: line 6: crm_id: must be a string of 1 to 19 digits, "
        "got '12345678901234567890' (skipped)",
        f"{csv_file}: line 7: kind: must be one of account, contact, vendor, item, got 'invoice' "
        "(skipped)",
        f"{csv_file}: line 8: expected 3 fields (kind,organization_id,crm_id), got 2 (skipped)",
        f"{csv_file}: line 10: organization_id: 999 is not configured for this service (skipped)",
        f"{csv_file}: line 11: duplicate of line 2 (skipped)",
    ]
    # And the good rows were imported, each once
    for kind, ids in good.items():
        for crm_id in ids:
            assert record(local_stack, kind, crm_id, organization_id)["status"] == "succeeded"  # type: ignore[index]
            assert_imported_once(local_stack, organization_id, kind, crm_id)
    # And the summary counts outcomes and lists the failures with Zoho's reasons
    assert _row(out, "succeeded") == ["succeeded", "8"]
    assert _row(out, "failed") == ["failed", "2"]
    assert _row(out, "invalid row (skipped)") == ["invalid row (skipped)", "5"]
    failure = _row(out, "12")
    assert failure[:5] == ["12", "account", missing, organization_id, "failed"]
    assert "Zoho code 1002" in failure[5]
    assert _row(out, "13")[4] == "failed"
    assert zoho_imports(local_stack, organization_id, "account", missing) == 0


def _row(table: str, first: str) -> list[str]:
    """The cells of the rich table row starting with `first`."""
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{table}")


def test_status_shows_one_record_and_pages_through_a_listing(
    cli: Cli, local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    organization_id = org(local_stack)
    ids = [new_id() for _ in range(3)]
    for crm_id in ids:
        assert cli("import", "vendor", crm_id, "--org", organization_id)[0] == 0

    code, out, _ = cli("status", "vendor", ids[0], "--org", organization_id)
    assert code == 0
    assert f"vendor {ids[0]} in organization {organization_id}" in out
    assert "status           succeeded" in out
    assert "books_id" in out and "attempts         1" in out

    code, out, _ = cli("status", "vendor", new_id(), "--org", organization_id)
    assert code == 1 and "no import recorded for vendor" in out

    # A listing follows next_cursor (pages of 2 here) up to --limit
    monkeypatch.setattr(api_client, "PAGE_SIZE", 2)
    code, out, _ = cli(
        "status", "--org", organization_id, "--kind", "vendor", "--status", "succeeded",
        "--limit", "5", "--json",
    )  # fmt: skip
    assert code == 0
    listed = json.loads(out)["imports"]
    assert len(listed) == 5
    assert {r["kind"] for r in listed} == {"vendor"}
    assert {r["status"] for r in listed} == {"succeeded"}
    code, out, _ = cli("status", "--org", organization_id, "--kind", "vendor", "--limit", "3")
    assert code == 0 and "3 import(s)" in out


def test_failures_explain_and_redrive_replays_the_dlq(cli: Cli, local_stack: LocalStack) -> None:
    sandbox = local_stack.sandbox
    assert sandbox is not None
    organization_id, accounts_only = sandbox.organizations[0], sandbox.organizations[1]
    # Given an import Zoho refused (this organization syncs CRM accounts only) ...
    contact = new_id()
    assert cli("import", "contact", contact, "--org", accounts_only)[0] == 1
    # ... and a message that exhausted its receives and sits in the item DLQ
    stranded = new_id()
    local_stack.client("sqs").send_message(
        QueueUrl=local_stack.dlq_urls["item"],
        MessageBody=json.dumps({"organization_id": organization_id, "crm_id": stranded}),
    )

    # When the operator asks what failed
    code, out, _ = cli("failures", "--org", accounts_only)

    # Then the failed record says why (Zoho's code and message) and what to do
    assert code == 0
    lines = out.splitlines()
    heading = f"failed: contact {contact} in organization {accounts_only}"
    assert heading in lines, out
    at = lines.index(heading)
    assert lines[at + 1].startswith("  why:  Zoho code 3010, HTTP 400: "), out
    assert lines[at + 1].endswith("[permanent]")
    assert lines[at + 2] == (
        "  next: fix the cause in Zoho (the CRM record, or Books' CRM sync mode for this kind), "
        f"then: crm-to-books import contact {contact} --org {accounts_only}"
    )
    # (the DLQ may hold others: the test stack's 2 s visibility dead-letters a few under load)
    dlq_line = re.compile(
        r"item DLQ: [1-9][0-9]* message\(s\) waiting; after fixing the cause: "
        r"crm-to-books redrive --kind item"
    )
    assert any(dlq_line.fullmatch(line) for line in lines), out

    # When the operator replays the DLQ
    code, out, _ = cli("redrive", "--kind", "item")

    # Then the message goes back to its queue and is imported
    assert code == 0
    assert re.match(
        r"item: moved [1-9][0-9]* message\(s\) from e2e-item-imports-dlq to e2e-item-imports ",
        out,
    ), out
    wait_for_status(local_stack, "item", stranded, organization_id, "succeeded")
    assert_imported_once(local_stack, organization_id, "item", stranded)
    code, out, _ = cli("redrive", "--all")
    assert code == 0 and re.search(r"^moved [0-9]+ message\(s\) in all$", out, re.M), out


@pytest.fixture
def connection_secret(local_stack: LocalStack) -> Iterator[str]:
    """The default connection's secret id; its value is put back afterwards."""
    secrets = local_stack.client("secretsmanager")
    secret_id = local_stack.names.connection_secret("default")
    before = secrets.get_secret_value(SecretId=secret_id)["SecretString"]
    yield secret_id
    secrets.put_secret_value(SecretId=secret_id, SecretString=before)
    # As `connect` does: the token keeper drops the shared access token the other refresh token
    # issued (its scopes are not the restored token's).
    assert local_stack.fire("token-keeper").ok


def test_connect_stores_a_new_refresh_token_and_prints_no_secret(
    cli: Cli, local_stack: LocalStack, monkeypatch: pytest.MonkeyPatch, connection_secret: str
) -> None:
    sandbox = local_stack.sandbox
    assert sandbox is not None
    secrets = local_stack.client("secretsmanager")
    secret_id = connection_secret
    before = json.loads(secrets.get_secret_value(SecretId=secret_id)["SecretString"])
    # A grant code with the scopes connect names (Books imports, CRM sweeps and channels)
    code = sandbox.issue_grant_code(scope=",".join(SCOPES))  # type: ignore[attr-defined]
    connect = (
        "connect", "--connection", "default", "--data-centre", sandbox.url,
        "--client-id", sandbox.client_id,
    )  # fmt: skip

    # When the operator pastes the client secret and the grant code (stdin, not a terminal)
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{sandbox.client_secret}\n{code}\n"))
    status, out, err = cli(*connect)

    # Then the secret holds the new refresh token, and the output holds no secret
    assert status == 0, err
    assert out == (
        f"connected: connection default, data centre {sandbox.url}, "
        f"refresh token stored in secret {secret_id}\n"
        "imports parked on this connection resume after the token keeper's and the re-drive "
        "job's next runs (every 5 minutes)\n"
    )
    after = json.loads(secrets.get_secret_value(SecretId=secret_id)["SecretString"])
    assert set(after) == {"client_id", "client_secret", "refresh_token", "accounts_url"}
    assert after["refresh_token"] not in (before["refresh_token"], "")
    assert (after["client_id"], after["accounts_url"]) == (sandbox.client_id, sandbox.url)
    for secret in (sandbox.client_secret, code, after["refresh_token"]):
        assert secret not in out + err

    # And imports keep working on the connection
    assert cli("import", "account", new_id(), "--org", org(local_stack))[0] == 0

    # When the same grant code is pasted again, Zoho refuses it: one clear line, secret kept
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{sandbox.client_secret}\n{code}\n"))
    status, out, err = cli(*connect)
    assert status == 2 and out == ""
    assert err.startswith("crm-to-books connect: Zoho refused the grant code at ")
    assert "(invalid_code): the grant code expired" in err and err.count("\n") == 1
    assert code not in err and sandbox.client_secret not in err
    kept = json.loads(secrets.get_secret_value(SecretId=secret_id)["SecretString"])
    assert kept == after
