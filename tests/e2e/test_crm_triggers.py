"""CRM-driven imports through the local stack, as a user runs them: `crm-to-books sync` (the sweep
function, invoked through the local stack's Lambda API) and `crm-to-books watch` (a channel at
the sandbox's CRM posting to the local `POST /v1/hooks/zoho-crm`), each record ending in Books
once, nothing called by hand but the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from crm_to_books import topology
from crm_to_books_cli.local import LocalStack
from tests.e2e.helpers import wait_until
from tests.e2e.test_cli_commands import Cli
from tests.e2e.test_service_imports import assert_imported_once, org, wait_for_status

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def cli(
    local_stack: LocalStack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    monkeypatch.setenv("COLUMNS", "250")
    return Cli(local_stack, capsys)


@pytest.fixture
def channel(cli: Cli, local_stack: LocalStack) -> Iterator[dict[str, Any]]:
    code, out, err = cli(
        "watch", "enable", "--org", org(local_stack), "--kinds", "contact", "--json"
    )
    assert code == 0, err
    yield json.loads(out)["channel"]
    cli("watch", "disable", "--org", org(local_stack))


def test_sync_queues_every_changed_record_once_and_a_second_sync_queues_nothing(
    cli: Cli, local_stack: LocalStack
) -> None:
    sandbox = local_stack.sandbox
    assert sandbox is not None
    organization = org(local_stack)
    created = sandbox.crm.create_records(  # type: ignore[attr-defined]
        "Vendors", [{"Vendor_Name": f"Sweep vendor {i}"} for i in range(40)]
    )

    code, out, err = cli("sync", "vendor", "--org", organization, "--json")

    assert code == 0, err
    first = json.loads(out)
    # Within Books' 100 requests a minute of the sandbox's organization (the thousands are in
    # tests/functional/test_crm_sweep.py and bench/).
    assert first["complete"] and first["found"] >= 40 and first["queued"] >= 40
    assert first["queued"] + first["already_imported"] + first["filtered"] == first["found"]
    wait_until(
        lambda: all(
            sandbox.counters()["books_records"].get(organization, {}).get("vendor", {}).get(r["id"])
            == 1
            for r in created
        ),
        "every swept vendor in Books",
        timeout=90,
    )
    for record in created[:5]:
        assert_imported_once(local_stack, organization, "vendor", record["id"])
        assert (
            "schedule"
            in wait_for_status(local_stack, "vendor", record["id"], organization, "succeeded")[
                "sources"
            ]
        )

    code, out, _ = cli("sync", "vendor", "--org", organization, "--json")

    assert code == 0
    assert json.loads(out) | {"checkpoint": None} == {
        "found": 0,
        "queued": 0,
        "already_imported": 0,
        "filtered": 0,
        "checkpoint": None,
        "complete": True,
        "stopped": None,
        "message": None,
    }
    code, out, _ = cli("sync", "vendor", "--org", organization)
    assert code == 0 and "queued            0" in out and "complete" in out


def test_sync_refuses_what_it_cannot_do_with_the_reason(cli: Cli, local_stack: LocalStack) -> None:
    code, _, err = cli("sync", "vendor", "--org", "999")
    assert code == 2 and "organization_id: 999 is not configured" in err
    code, _, err = cli("sync", "vendor", "--org", org(local_stack), "--since", "yesterday")
    assert code == 2 and "--since" in err


def test_a_notified_crm_record_reaches_books_in_seconds(
    cli: Cli, local_stack: LocalStack, channel: dict[str, Any]
) -> None:
    sandbox = local_stack.sandbox
    assert sandbox is not None
    organization = org(local_stack)
    assert channel["notify_url"] == f"{local_stack.api_url}{topology.HOOK_PATH}"

    [created] = sandbox.crm.create_records("Contacts", [{"Last_Name": "Notified"}])  # type: ignore[attr-defined]

    found = wait_for_status(local_stack, "contact", created["id"], organization, "succeeded", 30)
    assert found["sources"] == ["crm"]
    assert_imported_once(local_stack, organization, "contact", created["id"])
    code, out, _ = cli("watch", "status", "--org", organization, "--json")
    [listed] = json.loads(out)["channels"]
    assert code == 0 and listed["state"] == "active" and listed["kinds"] == ["contact"]


def test_the_public_hook_refuses_forged_notifications(
    local_stack: LocalStack, channel: dict[str, Any]
) -> None:
    url = f"{local_stack.api_url}{topology.HOOK_PATH}"
    forged = {
        "module": "Contacts",
        "ids": ["3652397000000200001"],
        "operation": "insert",
        "channel_id": channel["channel_id"],
        "token": "not-the-token",
    }
    wrong = requests.post(url, json=forged, timeout=10)
    missing = requests.post(url, json={**forged, "token": None}, timeout=10)

    assert wrong.status_code == 403 and wrong.json()["code"] == 1403
    assert missing.status_code == 401 and missing.json()["code"] == 1401
