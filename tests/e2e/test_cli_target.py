"""How the CLI finds the service: a deployed stack's CloudFormation outputs (the emulator's
CloudFormation standing in for AWS), with SigV4-signed API calls; and the one-line errors for a
missing stack, missing credentials and an unreachable API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from botocore.exceptions import ClientError

from crm_to_books import topology
from crm_to_books_cli import api_client
from crm_to_books_cli.local import LocalStack
from crm_to_books_cli.main import main
from crm_to_books_cli.target import describe_aws_error
from tests.e2e.test_service_imports import new_id, org

pytestmark = pytest.mark.timeout(60)
ENDPOINT_SERVICES = ("CLOUDFORMATION", "SQS", "SECRETS_MANAGER")


def aws_env(stack: LocalStack) -> dict[str, str]:
    """Like a machine with an AWS profile, except each service's endpoint is the emulator's."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "CRM_TO_BOOKS_")) and k != "COLUMNS"
    }
    env |= {f"AWS_ENDPOINT_URL_{service}": stack.aws_endpoint for service in ENDPOINT_SERVICES}
    env |= {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "example-secret-access-key",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    return env


def run_cli(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crm_to_books_cli.main", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_a_deployed_stack_is_found_by_its_outputs_and_requests_are_signed(
    local_stack: LocalStack,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given a stack whose outputs are the ones infra/stack.py declares
    template = {
        "Resources": {"Probe": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {
            "ApiUrl": {"Value": local_stack.api_url + "/"},
            "EventBusName": {"Value": local_stack.names.event_bus},
            **{
                f"{kind.title()}QueueUrl": {"Value": url}
                for kind, url in local_stack.queue_urls.items()
            },
        },
    }
    local_stack.client("cloudformation").create_stack(
        StackName="e2e-deployed", TemplateBody=json.dumps(template)
    )
    for name in list(os.environ):
        if name.startswith(("AWS_", "CRM_TO_BOOKS_")):
            monkeypatch.delenv(name)
    for name, value in aws_env(local_stack).items():
        monkeypatch.setenv(name, value)
    signed: list[dict[str, str]] = []
    sign = api_client.Api._signed

    def spy(self: api_client.Api, *args: Any) -> dict[str, str]:
        headers = sign(self, *args)
        signed.append(headers)
        return headers

    monkeypatch.setattr(api_client.Api, "_signed", spy)
    organization_id, crm_id = org(local_stack), new_id()

    # When the operator names only the stack
    code = main(["import", "account", crm_id, "--org", organization_id, "--stack", "e2e-deployed"])
    out, err = capsys.readouterr()

    # Then the API URL comes from its outputs and the call is signed for execute-api
    assert code == 0, err
    assert out.startswith(f"succeeded: account {crm_id}")
    (headers,) = signed
    assert headers["Authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"
    ) and headers["Authorization"].split("/")[2:4] == ["us-east-1", "execute-api"]
    # And the prefix comes from the outputs too (the bus name): the DLQs are found by name
    assert main(["failures", "--org", organization_id, "--stack", "e2e-deployed"]) == 0
    out = capsys.readouterr().out
    assert "DLQs: empty" in out or " DLQ: " in out, out

    # And sync and watch invoke the stack's sweep function by its name (Lambda's Invoke API, the
    # local stack's standing in), a channel posting to the stack's API URL unless told otherwise
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", local_stack.api_url)
    deployed = ["--org", organization_id, "--stack", "e2e-deployed", "--json"]
    assert main(["sync", "item", *deployed]) == 0
    assert json.loads(capsys.readouterr().out)["complete"] is True
    assert main(["watch", "enable", "--kinds", "item", *deployed]) == 0
    channel = json.loads(capsys.readouterr().out)["channel"]
    assert channel["notify_url"] == f"{local_stack.api_url}{topology.HOOK_PATH}"
    assert main(["watch", "disable", *deployed]) == 0
    assert json.loads(capsys.readouterr().out)["channel"]["channel_id"] == channel["channel_id"]


def test_a_missing_stack_is_one_clear_line(local_stack: LocalStack) -> None:
    result = run_cli(aws_env(local_stack), "status", "--org", "1", "--stack", "nowhere")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "crm-to-books status: stack nowhere not found in us-east-1: "
        "deploy it or pass --stack/--local\n"
    )


def test_missing_credentials_are_one_clear_line(local_stack: LocalStack) -> None:
    env = aws_env(local_stack)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    result = run_cli(env, "failures", "--org", "1")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "crm-to-books failures: no AWS credentials: configure a profile (--profile or "
        "AWS_PROFILE) or pass --local\n"
    )


def test_an_unreachable_api_is_one_clear_line(local_stack: LocalStack) -> None:
    result = run_cli(
        aws_env(local_stack),
        "import", "item", "1", "--org", "1", "--api-url", "http://127.0.0.1:9",
        "--aws-endpoint", local_stack.aws_endpoint,
    )  # fmt: skip
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "crm-to-books import: cannot reach the API at http://127.0.0.1:9: is the stack running "
        "(make dev for --local)?\n"
    )


def test_refused_credentials_name_the_code_and_the_fix() -> None:
    refused = ClientError(
        {"Error": {"Code": "ExpiredToken", "Message": "The security token included is expired"}},
        "DescribeStacks",
    )
    assert describe_aws_error(refused) == (
        "AWS refused the credentials (ExpiredToken): The security token included is expired. "
        "Refresh them or pick --profile"
    )
