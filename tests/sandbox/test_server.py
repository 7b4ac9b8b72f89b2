"""The server itself: concurrency, clean stop, the Python API's shape, redacted logs."""

from __future__ import annotations

import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from crm_to_books_cli.sandbox import SandboxConfig, ZohoSandbox
from crm_to_books_cli.sandbox.testing import access_token, wait_until


def _handler_threads(server) -> int:
    """This sandbox's live request threads (other sandboxes may run in the same session)."""
    return sum(t.is_alive() for t in list(server._handler_threads))


def test_startup_info_and_seeded_ids(zoho_sandbox):
    info = zoho_sandbox.startup_info()

    assert set(info) == {
        "url", "client_id", "client_secret", "refresh_token", "organizations", "crm_ids",
    }  # fmt: skip
    assert info["url"].startswith("http://127.0.0.1:")
    assert len(info["organizations"]) == 2
    assert all(org.isdigit() for org in info["organizations"])
    for kind in ("account", "contact", "vendor", "item"):
        assert info["crm_ids"][kind]
        assert all(crm_id.isdigit() and len(crm_id) <= 19 for crm_id in info["crm_ids"][kind])
    assert info["crm_ids"]["missing"].isdigit()


def test_serves_many_concurrent_requests(zoho_sandbox_factory):
    sandbox = zoho_sandbox_factory()
    org = sandbox.organizations[0]
    sandbox.set_limits(org, requests_per_minute=10_000, daily_limit=10_000, max_concurrency=1_000)
    token = access_token(sandbox)
    ids = [record["id"] for record in sandbox.crm.create_records("Accounts", [{}] * 320)]

    def work(worker: int) -> list[int]:
        with requests.Session() as http:
            return [
                http.post(
                    f"{sandbox.url}/books/v3/crm/account/{ids[worker * 5 + n]}/import",
                    params={"organization_id": org},
                    headers={"Authorization": f"Zoho-oauthtoken {token}"},
                    timeout=10,
                ).status_code
                for n in range(5)
            ]

    with ThreadPoolExecutor(64) as pool:
        statuses = [status for result in pool.map(work, range(64)) for status in result]

    assert statuses == [200] * 320
    counters = sandbox.counters()
    assert counters["books_requests"][org] == 320
    assert len(counters["books_records"][org]["account"]) == 320


def test_stop_frees_the_port_and_ends_kept_alive_connections():
    sandbox = ZohoSandbox(port=0).start()
    port = int(sandbox.url.rsplit(":", 1)[1])
    http = requests.Session()
    assert http.get(f"{sandbox.url}/__sandbox/state", timeout=5).ok  # keeps a connection open
    server = sandbox._server
    assert _handler_threads(server) >= 1

    sandbox.stop()

    assert _handler_threads(server) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{sandbox.url}/__sandbox/state", timeout=5)
    sandbox.stop()  # idempotent
    with ZohoSandbox(port=port) as again:
        assert requests.get(f"{again.url}/__sandbox/state", timeout=5).ok


def test_stop_releases_requests_held_by_faults():
    sandbox = ZohoSandbox(port=0).start()
    sandbox.set_faults(latency_seconds=60)
    token = access_token(sandbox)
    url = f"{sandbox.url}/books/v3/contacts?organization_id={sandbox.organizations[0]}"
    held = threading.Thread(
        target=lambda: requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    )
    held.start()
    wait_until(lambda: sandbox.counters()["in_flight"][sandbox.organizations[0]] == 1)
    server = sandbox._server

    sandbox.stop()
    held.join(5)

    assert not held.is_alive()
    assert _handler_threads(server) == 0


def test_context_manager_and_fixed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with ZohoSandbox(port=port, config=SandboxConfig()) as sandbox:
        assert sandbox.url == f"http://127.0.0.1:{port}"
        assert requests.get(f"{sandbox.url}/__sandbox/state", timeout=5).ok
    with pytest.raises(RuntimeError):
        ZohoSandbox().url  # noqa: B018 (not started: no url yet)


def test_silent_by_default_and_request_logs_redact_secrets(zoho_sandbox_factory, caplog):
    caplog.set_level(logging.INFO, logger="crm_to_books_cli.sandbox")
    quiet = zoho_sandbox_factory()
    access_token(quiet)
    assert caplog.records == []

    sandbox = zoho_sandbox_factory(log_requests=True)
    requests.post(
        f"{sandbox.url}/oauth/v2/token",
        params={
            "grant_type": "refresh_token",
            "client_id": sandbox.client_id,
            "client_secret": sandbox.client_secret,
            "refresh_token": sandbox.refresh_token,
        },
        timeout=5,
    )

    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.status == 200
    assert "client_secret=***" in record.path
    text = f"{record.getMessage()} {record.__dict__}"
    assert sandbox.client_secret not in text
    assert sandbox.refresh_token not in text
