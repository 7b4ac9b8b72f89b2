"""`crm-to-books sandbox` and `python -m crm_to_books_cli.sandbox` as real processes."""

from __future__ import annotations

import json
import signal
import socket

import requests


def _token(info) -> requests.Response:
    return requests.post(
        f"{info['url']}/oauth/v2/token",
        data={
            "grant_type": "refresh_token",
            "client_id": info["client_id"],
            "client_secret": info["client_secret"],
            "refresh_token": info["refresh_token"],
        },
        timeout=5,
    )


def test_cli_prints_one_json_line_serves_and_exits_cleanly_on_sigterm(cli):
    process = cli("-m", "crm_to_books_cli.main", "sandbox", "--port", "0", "--token-lifetime", "90")

    info = process.first_line()
    answer = _token(info)
    code, rest = process.stop(signal.SIGTERM)

    assert set(info) == {
        "url", "client_id", "client_secret", "refresh_token", "organizations", "crm_ids",
    }  # fmt: skip
    assert answer.json()["expires_in"] == 90
    assert answer.json()["api_domain"] == info["url"]
    assert code == 0
    assert rest == ""  # exactly one line on stdout


def test_python_dash_m_sandbox_with_options_and_sigint(cli, tmp_path):
    config = tmp_path / "sandbox.json"
    config.write_text(json.dumps({"reimport": "duplicate", "faults": {"seed": 3}}))
    process = cli(
        "-m", "crm_to_books_cli.sandbox", "--port", "0", "--config", str(config),
        "--result-key", "customer_id", "--rate-window", "5", "--faults", '{"fail_5xx_next": 1}',
        "--auto-create-crm-records",
    )  # fmt: skip

    info = process.first_line()
    token = _token(info).json()["access_token"]
    url = f"{info['url']}/books/v3/crm/account/1/import"
    params = {"organization_id": info["organizations"][0]}
    headers = {"Authorization": f"Zoho-oauthtoken {token}"}
    statuses = [requests.post(url, params=params, headers=headers, timeout=5) for _ in range(3)]
    state = requests.get(f"{info['url']}/__sandbox/state", timeout=5).json()
    code, _ = process.stop(signal.SIGINT)

    assert [s.status_code for s in statuses] == [500, 200, 200]
    assert "customer_id" in statuses[1].json()["data"]
    assert state["counters"]["duplicates"] == 1
    assert state["config"]["rate_window_seconds"] == 5
    assert state["config"]["auto_create_crm_records"] is True  # so account 1 imports
    assert state["faults"]["seed"] == 3
    assert 1 <= int(statuses[1].headers["X-Rate-Limit-Reset"]) <= 5
    assert code == 0


def test_port_in_use_fails_with_a_message(cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = cli("-m", "crm_to_books_cli.main", "sandbox", "--port", str(port))
        out, err = process.proc.communicate(timeout=20)

    assert process.proc.returncode == 2
    assert out == ""
    assert "crm-to-books sandbox:" in err


def test_bad_option_is_a_usage_error(cli):
    process = cli("-m", "crm_to_books_cli.main", "sandbox", "--reimport", "sometimes")
    _, err = process.proc.communicate(timeout=20)

    assert process.proc.returncode == 2
    assert "--reimport" in err


def test_the_cli_serves_the_crm(cli):
    process = cli("-m", "crm_to_books_cli.sandbox", "--port", "0", "--crm-credits", "1")
    info = process.first_line()
    token = _token(info).json()["access_token"]
    url, headers = f"{info['url']}/crm/v8/Accounts", {"Authorization": f"Zoho-oauthtoken {token}"}

    answers = [
        requests.get(url, params={"fields": "Account_Name"}, headers=headers, timeout=5)
        for _ in range(2)
    ]
    process.stop()

    assert [a.status_code for a in answers] == [200, 429]
    assert {r["id"] for r in answers[0].json()["data"]} == set(info["crm_ids"]["account"])
