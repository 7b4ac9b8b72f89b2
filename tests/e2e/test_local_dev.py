"""`crm-to-books dev` as a developer runs it: a subprocess, ready fast, stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests

from crm_to_books_cli.sandbox import SandboxConfig, ZohoSandbox
from tests.e2e.helpers import wait_until

FIXTURES = Path(__file__).parent / "fixtures"
CLI = Path(sys.executable).with_name("crm-to-books")
FAKE_FUNCTIONS = ["--functions-dir", str(FIXTURES / "functions")]
FAKE_FUNCTIONS += ["--layer-dir", str(FIXTURES / "layer")]


class Dev:
    """A running `crm-to-books dev`, its output read line by line as it comes."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [str(CLI), "dev", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait(self, timeout: float) -> int:
        """The exit code, once the process has exited and all its output is read."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return code

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            ended = not self._reader.is_alive()  # before reading the lines: no line is missed
            match = next((m for line in self.lines if (m := re.search(pattern, line))), None)
            if match is None and ended:
                raise AssertionError(f"dev ended ({self.process.poll()}):\n{self.output}")
            return match

        return wait_until(found, f"a line matching {pattern!r}", timeout)

    def descendants(self) -> set[int]:
        found: set[int] = set()
        todo = [self.process.pid]
        while todo:
            pid = todo.pop()
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                kids = {int(p) for p in children.read_text().split()}
                todo += kids - found
                found |= kids
        return found

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def dev_env() -> dict[str, str]:
    """This environment without the variables `dev` reads (a real Zoho, ports)."""
    ours = ("ZOHO_", "API_PORT", "AWS_PORT")
    return {k: v for k, v in os.environ.items() if not k.startswith(ours)}


@pytest.fixture
def running_dev(dev_env: dict[str, str]) -> Iterator[Dev]:
    dev = Dev("--api-port", "0", "--aws-port", "0", *FAKE_FUNCTIONS, env=dev_env)
    yield dev
    dev.kill()


def test_dev_starts_answers_and_stops_cleanly_on_sigterm(running_dev: Dev) -> None:
    # Given `crm-to-books dev` started on free ports
    started = time.monotonic()
    ready = running_dev.wait_for_line(r"^ready in ([\d.]+) s", timeout=30)
    assert float(ready.group(1)) < 20
    assert time.monotonic() - started < 25

    # When the printed curl import (a seeded account, the sandbox's first organization) is pasted
    organization = SandboxConfig().organizations[0].organization_id
    curl = running_dev.wait_for_line(r"curl -X POST '([^']+)'", timeout=1).group(1)
    assert re.fullmatch(
        rf"http://127\.0\.0\.1:\d+/v1/crm/account/\d{{19}}/import\?organization_id={organization}",
        curl,
    )
    response = requests.post(curl, timeout=30)
    assert response.status_code == 201
    assert response.json()["context"]["function_name"] == "crm-to-books-account-import"

    # And the printed aws send-message is sent
    command = running_dev.wait_for_line(r"--endpoint-url (\S+) sqs send-message", timeout=1)
    queue_url = running_dev.wait_for_line(r"--queue-url (\S+) --message-body '(.+)'", timeout=1)
    sqs = boto3.client(
        "sqs",
        endpoint_url=command.group(1),
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    sqs.send_message(QueueUrl=queue_url.group(1), MessageBody=queue_url.group(2))
    running_dev.wait_for_line(r"\[crm-to-books-account-import\] .*\"outcome\": \"ok\"", timeout=30)
    body = json.loads(shlex.split(queue_url.group(0))[-1])
    assert body["organization_id"] == organization
    assert re.fullmatch(r"\d{19}", body["crm_id"])

    # Then SIGTERM stops everything it started
    containers = running_dev.descendants()
    assert containers
    running_dev.process.send_signal(signal.SIGTERM)
    assert running_dev.wait(timeout=20) == 0
    assert [pid for pid in containers if Path(f"/proc/{pid}").exists()] == []
    assert running_dev.lines[-1] == "stopped"

    # And no secret reached the output
    sandbox = SandboxConfig()
    assert sandbox.client_secret not in running_dev.output
    assert sandbox.refresh_token not in running_dev.output


def test_dev_says_clearly_when_a_port_is_taken(dev_env: dict[str, str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        dev = Dev("--aws-port", str(port), "--api-port", "0", env=dev_env)
        try:
            assert dev.wait(timeout=30) == 1
        finally:
            dev.kill()
    assert f"127.0.0.1:{port} is already in use" in dev.output
    assert "--aws-port or AWS_PORT" in dev.output


def test_dev_names_the_missing_zoho_variables(dev_env: dict[str, str]) -> None:
    env = {**dev_env, "ZOHO_ACCOUNTS_URL": "https://accounts.zoho.eu", "ZOHO_CLIENT_ID": "x"}
    dev = Dev("--api-port", "0", "--aws-port", "0", env=env)
    try:
        assert dev.wait(timeout=30) == 2
    finally:
        dev.kill()
    assert "ZOHO_CLIENT_SECRET, ZOHO_REFRESH_TOKEN, ZOHO_ORGANIZATION_IDS" in dev.output


def cli(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A `crm-to-books ...` line of the banner, run as pasted, with `--json`."""
    return subprocess.run(
        [str(CLI), *command[1:], "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dev_against_an_outside_zoho_sweeps_and_watches_its_crm(dev_env: dict[str, str]) -> None:
    # Given a Zoho-compatible account that is not the stack's own (a sandbox of this test's),
    # with a CRM account, and `crm-to-books dev` pointed at it by the ZOHO_* variables
    with ZohoSandbox(port=0) as zoho:
        organization = zoho.organizations[0]
        [swept] = zoho.crm.create_records("Accounts", [{"Account_Name": "Outside swept"}])
        env = dev_env | {
            "ZOHO_ACCOUNTS_URL": zoho.url,
            "ZOHO_CLIENT_ID": zoho.client_id,
            "ZOHO_CLIENT_SECRET": zoho.client_secret,
            "ZOHO_REFRESH_TOKEN": zoho.refresh_token,
            "ZOHO_ORGANIZATION_IDS": organization,
        }
        dev = Dev("--api-port", "0", "--aws-port", "0", env=env)
        try:
            dev.wait_for_line(r"^ready in", timeout=60)
            sync = shlex.split(dev.wait_for_line(r"^\s*(crm-to-books sync .+)$", 1).group(1))
            watch = shlex.split(dev.wait_for_line(r"^\s*(crm-to-books watch .+)$", 1).group(1))

            # When the banner's sync runs: the CRM is read at the token's api_domain
            swept_out = cli(sync, env)
            # And the banner's watch enable, then a record is created in that CRM
            watched = cli(watch, env)
            assert watched.returncode == 0, watched.stderr
            [notified] = zoho.crm.create_records("Accounts", [{"Account_Name": "Outside notified"}])

            # Then both reach that account's Books, once each, from their own trigger
            assert swept_out.returncode == 0, swept_out.stderr
            result = json.loads(swept_out.stdout)
            assert result["complete"] and result["queued"] >= 1
            channel = json.loads(watched.stdout)["channel"]
            assert channel["organization_id"] == organization
            assert zoho.crm.channels()  # registered at that Zoho, not at a sandbox of dev's

            def in_books() -> bool:
                made = zoho.counters()["books_records"].get(organization, {}).get("account", {})
                return made.get(swept["id"]) == 1 and made.get(notified["id"]) == 1

            wait_until(in_books, "the swept and the notified account in Books", timeout=60)
            dev.process.send_signal(signal.SIGTERM)
            assert dev.wait(timeout=20) == 0
        finally:
            dev.kill()
