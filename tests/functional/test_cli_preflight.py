"""`crm-to-books preflight` against moto standing in for an AWS account, with the stack's real
synthesized template: what blocks a first deploy, what a deployed stack still lacks, and what
the operator is told to do. The few answers moto does not give (Lambda's account limits, an
unconfirmed subscription, a rolled-back stack) come from a botocore hook, as moto's own do."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.handlers
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws

from crm_to_books import dynamo, tokens, topology
from crm_to_books_cli.main import main
from tests.infra.conftest import CONFIG, synthesize

REGION = "eu-west-1"
STACK = "crm-to-books-test"  # CONFIG's stage "test"
NAMES = topology.Names(STACK)
BOOTSTRAP = "/cdk-bootstrap/hnb659fds/version"
ROLE_TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "apigateway.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
SECRET_VALUE = "rt-1000.sEcReT-never-printed"


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The stack's template as synthesized, and one for an account whose role is left alone."""
    outdir = tmp_path_factory.mktemp("cdk.out")
    synth = synthesize(CONFIG, outdir)
    body = json.loads(json.dumps(synth.template))
    for lid in list(synth.of_type("AWS::ApiGateway::Account")):
        del body["Resources"][lid]
    existing = outdir / "existing-role.template.json"
    existing.write_text(json.dumps(body))
    return {"create": outdir / f"{STACK}.template.json", "existing": existing}


Answers = dict[str, Callable[[dict[str, Any]], dict[str, Any]]]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Answers]:
    """moto for the account; `answers["service.Operation"] = fn(params) -> response` for what
    moto lacks. Lambda's limits default to a long-lived account's."""
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "CRM_TO_BOOKS_STACK", "CRM_TO_BOOKS_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)  # no cdk.out/ here: the template comes from --template
    answers: Answers = {"lambda.GetAccountSettings": lambda _: limits(1000)}

    def answer(model: Any, params: dict[str, Any], **_: Any) -> Any:
        service = model.service_model.service_id.hyphenize()
        reply = answers.get(f"{service}.{model.name}")
        if reply is None:
            return None
        return AWSResponse("https://aws", 200, {}, None), reply(params)

    handlers = [*botocore.handlers.BUILTIN_HANDLERS, ("before-call", answer)]
    monkeypatch.setattr(botocore.handlers, "BUILTIN_HANDLERS", handlers)
    with mock_aws():
        yield answers


def limits(total: int, unreserved: int | None = None) -> dict[str, Any]:
    free = total if unreserved is None else unreserved
    return {"AccountLimit": {"ConcurrentExecutions": total, "UnreservedConcurrentExecutions": free}}


def client(service: str) -> Any:
    return boto3.client(service, region_name=REGION)


def preflight(
    template: Path, *extra: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    code = main(["preflight", "--stack", STACK, "--template", str(template), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def found(report: dict[str, Any], check: str) -> list[dict[str, str]]:
    return [f for f in report["findings"] if f["check"] == check]


def bootstrapped(version: str = "28") -> None:
    client("ssm").put_parameter(Name=BOOTSTRAP, Value=version, Type="String")


# --- before the first deploy ----------------------------------------------------------------------
def test_a_fresh_account_is_told_to_bootstrap_and_nothing_else_blocks(aws, templates, capsys):
    code, report = preflight(templates["create"], capsys=capsys)

    assert code == 1
    (bootstrap,) = found(report, "bootstrap")
    assert bootstrap["status"] == "blocking"
    assert bootstrap["action"] == f"npx aws-cdk bootstrap aws://123456789012/{REGION}"
    assert [f["check"] for f in report["findings"] if f["status"] == "blocking"] == ["bootstrap"]
    assert found(report, "leftover")[0]["status"] == "ok"
    assert found(report, "stack")[0]["message"] == f"no stack {STACK} yet: the deploy creates it"
    assert report["deployed"] is False
    # The checks of a deployed stack wait for the deploy.
    assert not found(report, "connection")


def test_a_bootstrapped_account_passes(aws, templates, capsys):
    bootstrapped()
    code, report = preflight(templates["create"], capsys=capsys)
    assert code == 0, report
    assert found(report, "bootstrap")[0]["message"] == "CDK bootstrap version 28 (needs 6+)"


def test_an_old_bootstrap_blocks(aws, templates, capsys):
    bootstrapped("5")
    code, report = preflight(templates["create"], capsys=capsys)
    assert code == 1
    (bootstrap,) = found(report, "bootstrap")
    assert bootstrap["status"] == "blocking"
    assert "needs 6 or later" in bootstrap["message"]


@pytest.mark.parametrize(
    ("total", "unreserved", "status"),
    [
        (10, 10, "blocking"),  # a new account: 10, and the queues may take 4 x 3 = 12
        (20, 15, "warning"),  # the pollers fit, but not one more call per function
        (1000, 1000, "ok"),
    ],
)
def test_lambda_concurrency_is_weighed_against_the_queues_maximum_concurrency(
    aws, templates, capsys, total, unreserved, status
):
    bootstrapped()
    aws["lambda.GetAccountSettings"] = lambda _: limits(total, unreserved)
    code, report = preflight(templates["create"], capsys=capsys)
    (concurrency,) = found(report, "concurrency")
    assert concurrency["status"] == status
    pollers = CONFIG["queue_concurrency"] * len(topology.IMPORT_FUNCTIONS)
    assert f"the queues' pollers may use {pollers}" in concurrency["message"]
    if status != "ok":
        assert "L-B99A9384" in concurrency["action"]
        assert "to 21 or more" in concurrency["action"]  # 12 pollers + 9 functions
    assert code == (1 if status == "blocking" else 0)


def test_resources_left_by_an_earlier_stack_block_unless_the_deploy_adopts_them(
    aws, templates, capsys
):
    bootstrapped()
    client("dynamodb").create_table(
        **topology.LEDGER_TABLE.create_table_request(NAMES.ledger_table)
    )
    client("secretsmanager").create_secret(Name=NAMES.connection_secret("main"), SecretString="{}")
    client("logs").create_log_group(logGroupName=f"/aws/lambda/{STACK}-redrive")

    code, report = preflight(templates["create"], capsys=capsys)
    assert code == 1
    leftovers = {f["message"].split(" exists")[0]: f for f in found(report, "leftover")}
    assert set(leftovers) == {
        f"table {NAMES.ledger_table}",
        f"secret {NAMES.connection_secret('main')}",
        f"log group /aws/lambda/{STACK}-redrive",
    }
    for finding in leftovers.values():
        assert finding["status"] == "blocking"
        assert "npx aws-cdk deploy --import-existing-resources" in finding["action"]

    code, report = preflight(templates["create"], "--import-existing", capsys=capsys)
    assert code == 0
    assert {f["status"] for f in found(report, "leftover")} == {"ok"}
    assert all("the deploy adopts it" in f["message"] for f in found(report, "leftover"))


def test_a_secret_scheduled_for_deletion_must_be_restored_or_deleted(aws, templates, capsys):
    bootstrapped()
    secrets = client("secretsmanager")
    name = NAMES.connection_secret("eu")
    secrets.create_secret(Name=name, SecretString="{}")
    secrets.delete_secret(SecretId=name, RecoveryWindowInDays=7)

    code, report = preflight(templates["create"], "--import-existing", capsys=capsys)
    assert code == 1
    (finding,) = [f for f in found(report, "leftover") if name in f["message"]]
    assert finding["status"] == "blocking"
    assert f"aws secretsmanager restore-secret --secret-id {name}" in finding["action"]


def test_a_rolled_back_first_deploy_must_be_deleted_first(aws, templates, capsys):
    bootstrapped()
    aws["cloudformation.DescribeStacks"] = lambda _: {
        "Stacks": [
            {
                "StackName": STACK,
                "StackStatus": "ROLLBACK_COMPLETE",
                "CreationTime": "2025-01-01T00:00:00Z",
            }
        ]
    }
    code, report = preflight(templates["create"], capsys=capsys)
    assert code == 1
    (stack,) = found(report, "stack")
    assert stack["status"] == "blocking"
    assert (
        stack["action"]
        == f"aws cloudformation delete-stack --stack-name {STACK}, then deploy again"
    )


# --- the account's API Gateway log role -----------------------------------------------------------
def test_the_stack_sets_the_accounts_log_role_and_says_when_it_replaces_one(aws, templates, capsys):
    bootstrapped()
    _, report = preflight(templates["create"], capsys=capsys)
    assert found(report, "api-log-role")[0]["status"] == "ok"

    other = client("iam").create_role(
        RoleName="someone-elses", AssumeRolePolicyDocument=json.dumps(ROLE_TRUST)
    )["Role"]["Arn"]
    client("apigateway").update_account(
        patchOperations=[{"op": "replace", "path": "/cloudwatchRoleArn", "value": other}]
    )
    code, report = preflight(templates["create"], capsys=capsys)
    (role,) = found(report, "api-log-role")
    assert (role["status"], code) == ("warning", 0)
    assert "api.cloudwatch_role: existing" in role["action"]


def test_an_account_role_left_alone_must_exist_and_trust_api_gateway(aws, templates, capsys):
    bootstrapped()
    code, report = preflight(templates["existing"], capsys=capsys)
    (role,) = found(report, "api-log-role")
    assert (role["status"], code) == ("blocking", 1)
    assert "set api.cloudwatch_role to create" in role["action"]

    gone = "arn:aws:iam::123456789012:role/deleted-long-ago"
    apigateway = client("apigateway")
    patch = {"op": "replace", "path": "/cloudwatchRoleArn", "value": gone}
    apigateway.update_account(patchOperations=[patch])
    _, report = preflight(templates["existing"], capsys=capsys)
    assert "does not exist" in found(report, "api-log-role")[0]["message"]

    arn = client("iam").create_role(
        RoleName="apigw-logs", AssumeRolePolicyDocument=json.dumps(ROLE_TRUST)
    )["Role"]["Arn"]
    apigateway.update_account(patchOperations=[{**patch, "value": arn}])
    code, report = preflight(templates["existing"], capsys=capsys)
    assert (found(report, "api-log-role")[0]["status"], code) == ("ok", 0)


# --- after the deploy -----------------------------------------------------------------------------
@pytest.fixture
def deployed(aws: Answers) -> dict[str, Any]:
    """The stack as CloudFormation reports it (outputs), the connections' secrets as the stack
    creates them (placeholders), the state table, and an e-mail subscription."""
    bootstrapped()
    sns = client("sns")
    topic = sns.create_topic(Name="alarms")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="email", Endpoint="ops@example.com")
    stand_in = {
        "Resources": {"Probe": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {"AlarmTopicArn": {"Value": topic}},
    }
    client("cloudformation").create_stack(StackName=STACK, TemplateBody=json.dumps(stand_in))
    for connection in CONFIG["connections"]:
        placeholders = dict.fromkeys(("client_id", "client_secret", "refresh_token"), "")
        client("secretsmanager").create_secret(
            Name=NAMES.connection_secret(connection),
            SecretString=json.dumps({**placeholders, "accounts_url": "", "placeholder": "x"}),
        )
    client("dynamodb").create_table(**topology.STATE_TABLE.create_table_request(NAMES.state_table))
    return {"topic": topic}


def connect(connection: str) -> None:
    client("secretsmanager").put_secret_value(
        SecretId=NAMES.connection_secret(connection),
        SecretString=json.dumps(
            {
                "client_id": "1000.ABC",
                "client_secret": SECRET_VALUE,
                "refresh_token": SECRET_VALUE,
                "accounts_url": "https://accounts.zoho.eu",
            }
        ),
    )


def token(connection: str, **fields: Any) -> None:
    """The connection's item in the state table, as the token keeper writes it."""
    item = {**tokens._key(connection), **dynamo.dump(fields)}
    client("dynamodb").put_item(TableName=NAMES.state_table, Item=item)


def keeper_ran(invocations: int, errors: int = 0) -> None:
    data = [
        {
            "MetricName": name,
            "Dimensions": [
                {"Name": "FunctionName", "Value": NAMES.function(topology.TOKEN_KEEPER)}
            ],
            "Value": value,
        }
        for name, value in (("Invocations", invocations), ("Errors", errors))
    ]
    client("cloudwatch").put_metric_data(Namespace="AWS/Lambda", MetricData=data)


def test_a_deployed_stack_with_unconnected_connections_blocks_and_names_the_command(
    aws, templates, deployed, capsys
):
    connect("main")
    token("main", access_token=SECRET_VALUE, expires_at=time.time() + 3000)
    keeper_ran(3)

    code, report = preflight(templates["create"], capsys=capsys)

    assert report["deployed"] is True
    connections = {f["message"].split(":")[0]: f for f in found(report, "connection")}
    assert connections["connection main"]["status"] == "ok"
    for name in ("eu", "spare"):
        finding = connections[f"connection {name} is not connected"]
        assert finding["status"] == "blocking"
        assert "client_id, client_secret, refresh_token, accounts_url" in finding["message"]
        assert finding["action"].startswith(
            f"crm-to-books connect --stack {STACK} --connection {name} --data-centre DC "
            "--client-id CLIENT_ID"
        )
    assert code == 1
    keeper = found(report, "token-keeper")
    assert keeper[0]["message"].startswith(f"the token keeper {STACK}-token-keeper ran 3 time(s)")
    assert any(f["message"].startswith("connection main: access token valid for") for f in keeper)


def test_no_secret_value_is_ever_printed(aws, templates, deployed, capsys):
    for connection in CONFIG["connections"]:
        connect(connection)
    token("main", access_token=SECRET_VALUE, expires_at=1.0)
    for extra in ((), ("--json",)):
        main(["preflight", "--stack", STACK, "--template", str(templates["create"]), *extra])
        shown = capsys.readouterr()
        assert SECRET_VALUE not in shown.out + shown.err
        assert "connection main: its secret is set" in shown.out


def test_an_unhealthy_token_keeper_is_reported(aws, templates, deployed, capsys):
    for connection in CONFIG["connections"]:
        connect(connection)
    token("main", broken=True, broken_reason="invalid_code")
    token("eu", throttled_until=4102444800.0)  # 2100: blocked for a while
    keeper_ran(3, errors=2)

    code, report = preflight(templates["create"], capsys=capsys)

    keeper = {f["message"]: f for f in found(report, "token-keeper")}
    failed = keeper[f"the token keeper {STACK}-token-keeper failed 2 time(s) in 15 min"]
    assert failed["status"] == "blocking"
    assert failed["action"] == f"aws logs tail /aws/lambda/{STACK}-token-keeper --since 15m"
    broken = next(f for m, f in keeper.items() if m.startswith("Zoho refused connection main"))
    assert broken["status"] == "blocking"
    assert "(invalid_code)" in broken["message"]
    assert "--connection main" in broken["action"]
    throttled = next(f for m, f in keeper.items() if "connection eu" in m)
    assert throttled["status"] == "warning"
    no_token = next(f for m, f in keeper.items() if "connection spare" in m)
    assert no_token["message"] == "connection spare has no access token yet"
    assert code == 1


def test_a_keeper_that_never_ran_is_a_warning(aws, templates, deployed, capsys):
    for connection in CONFIG["connections"]:
        connect(connection)
    _, report = preflight(templates["create"], capsys=capsys)
    (runs, *_) = found(report, "token-keeper")
    assert runs["status"] == "warning"
    assert "has not run in 15 min" in runs["message"]


def test_alarm_subscriptions_must_be_confirmed(aws, templates, deployed, capsys):
    for connection in CONFIG["connections"]:
        connect(connection)
    _, report = preflight(templates["create"], capsys=capsys)
    assert found(report, "alarm-topic") == [
        {
            "check": "alarm-topic",
            "status": "ok",
            "message": "ops@example.com receives the alarms",
            "action": "",
        }
    ]

    aws["sns.ListSubscriptionsByTopic"] = lambda _: {
        "Subscriptions": [
            {
                "SubscriptionArn": "PendingConfirmation",
                "Protocol": "email",
                "Endpoint": "ops@example.com",
                "TopicArn": deployed["topic"],
            }
        ]
    }
    code, report = preflight(templates["create"], capsys=capsys)
    (pending,) = found(report, "alarm-topic")
    assert pending["status"] == "blocking"
    assert "email subscription ops@example.com is not confirmed" in pending["message"]
    assert deployed["topic"] in pending["action"]
    assert code == 1


def test_human_output_says_what_to_do_and_exits_1_on_a_blocking_finding(aws, templates, capsys):
    code = main(["preflight", "--stack", STACK, "--template", str(templates["create"])])
    out = capsys.readouterr().out
    assert code == 1
    assert "  BLOCKING  bootstrap" in out
    assert f"-> npx aws-cdk bootstrap aws://123456789012/{REGION}" in out
    assert "1 blocking, 0 warning(s): fix the blocking findings first" in out
    assert "after the deploy, run preflight again" in out


def test_without_a_template_or_a_stack_the_operator_is_told_to_synthesize(aws, capsys):
    code = main(["preflight", "--stack", STACK])
    assert code == 2
    assert "run `make synth`" in capsys.readouterr().err


def test_denied_checks_are_reported_not_fatal(aws, templates, capsys):
    def denied(_: dict[str, Any]) -> dict[str, Any]:
        raise botocore.exceptions.ClientError(
            {"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "GetAccountSettings"
        )

    bootstrapped()
    aws["lambda.GetAccountSettings"] = denied
    code, report = preflight(templates["create"], capsys=capsys)
    (concurrency,) = found(report, "concurrency")
    assert concurrency["status"] == "warning"
    assert concurrency["message"] == (
        "could not check: AWS denied GetAccountSettings (AccessDeniedException)"
    )
    assert "docs/deploy.md#operator-permissions" in concurrency["action"]
    assert code == 0


def test_crm_triggers_report_missing_scopes_lapsed_channels_and_failed_syncs(
    aws, templates, deployed, capsys
):
    for connection in CONFIG["connections"]:
        connect(connection)
    token(
        "main",
        access_token=SECRET_VALUE,
        expires_at=time.time() + 3000,
        missing_scopes={"ZohoCRM.modules.accounts.READ": {"until": time.time() + 900}},
    )
    state = client("dynamodb")
    state.put_item(
        TableName=NAMES.state_table,
        Item=dynamo.dump(
            {"pk": "channel#10234695", "status": "active", "expires_at": time.time() - 120}
        ),
    )
    state.put_item(
        TableName=NAMES.state_table,
        Item=dynamo.dump(
            {
                "pk": "sweep#10234695#account",
                "last_run": {"stopped": "scope_missing", "message": "the connection lacks it"},
            }
        ),
    )

    _, report = preflight(templates["create"], capsys=capsys)

    crm = {f["message"]: f for f in found(report, "crm")}
    scope = next(f for m, f in crm.items() if m.startswith("connection main lacks"))
    assert "ZohoCRM.modules.accounts.READ" in scope["message"] and scope["status"] == "warning"
    assert scope["action"].startswith(f"crm-to-books connect --stack {STACK} --connection main")
    lapsed = next(f for m, f in crm.items() if "channel lapsed" in m)
    assert lapsed["message"].startswith("organization 10234695's CRM notification channel")
    sync = next(f for m, f in crm.items() if m.startswith("sync account of 10234695"))
    assert sync["status"] == "warning" and "scope_missing" in sync["message"]
    assert sync["action"].startswith(f"crm-to-books sync account --org 10234695 --stack {STACK}")
