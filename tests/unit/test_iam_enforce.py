"""Which authorizations an AWS call needs (`crm_to_books_cli.iam.calls`), and the botocore hook
that refuses it the way the service does (`crm_to_books_cli.iam.enforce`). No network: a
refused call never leaves the client, an allowed one is answered by botocore's Stubber."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from crm_to_books_cli.iam.calls import Needed, Where, needed
from crm_to_books_cli.iam.cfn import Role
from crm_to_books_cli.iam.enforce import Caller, Enforcer, read_role_file, write_role_file
from crm_to_books_cli.iam.policy import Decision

ACCOUNT, REGION = "123456789012", "us-east-1"
ARN = f"arn:aws:%s:{REGION}:{ACCOUNT}:%s"
LEDGER, STATE = ARN % ("dynamodb", "table/p-ledger"), ARN % ("dynamodb", "table/p-state")
SECRET = ARN % ("secretsmanager", "secret:p/connections/default-AbC123")
QUEUE = ARN % ("sqs", "p-item-imports")
WHERE = Where("aws", REGION, ACCOUNT, {"p/connections/default": SECRET}.get)


def need(prefix: str, operation: str, **params: Any) -> list[tuple[str, str]]:
    return [(n.action, n.resource) for n in needed(prefix, operation, params, WHERE)]


# --- calls ---------------------------------------------------------------------------------------
def test_dynamodb_tables_and_indexes_by_name_or_arn() -> None:
    assert need("dynamodb", "GetItem", TableName="p-ledger", Key={}) == [
        ("dynamodb:GetItem", LEDGER)
    ]
    assert need("dynamodb", "Query", TableName="p-ledger", IndexName="by_status") == [
        ("dynamodb:Query", f"{LEDGER}/index/by_status")
    ]
    assert need("dynamodb", "PutItem", TableName=STATE, Item={}) == [("dynamodb:PutItem", STATE)]
    assert need("dynamodb", "ListTables") == [("dynamodb:ListTables", "*")]


def test_a_transaction_needs_each_items_action_on_its_table() -> None:
    items = [
        {"Update": {"TableName": "p-state", "Key": {}, "UpdateExpression": "SET a = :a"}},
        {"Delete": {"TableName": "p-ledger", "Key": {}}},
        {"ConditionCheck": {"TableName": "p-ledger", "Key": {}, "ConditionExpression": "x"}},
        {"Put": {"TableName": "p-ledger", "Item": {}}},
    ]

    found = needed("dynamodb", "TransactWriteItems", {"TransactItems": items}, WHERE)

    assert [(n.action, n.resource) for n in found] == [
        ("dynamodb:UpdateItem", STATE),
        ("dynamodb:DeleteItem", LEDGER),
        ("dynamodb:ConditionCheckItem", LEDGER),
        ("dynamodb:PutItem", LEDGER),
    ]
    assert {n.context for n in found} == {(("dynamodb:EnclosingOperation", "TransactWriteItems"),)}
    batch = {"RequestItems": {"p-ledger": [], "p-state": []}}
    assert need("dynamodb", "BatchWriteItem", **batch) == [
        ("dynamodb:BatchWriteItem", LEDGER),
        ("dynamodb:BatchWriteItem", STATE),
    ]


@pytest.mark.parametrize(
    "url",
    [
        f"http://127.0.0.1:4566/{ACCOUNT}/p-item-imports",  # the local emulator's
        f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/p-item-imports",
    ],
)
def test_sqs_queues_by_url_and_batches_as_their_single_action(url: str) -> None:
    assert need("sqs", "SendMessageBatch", QueueUrl=url, Entries=[]) == [("sqs:SendMessage", QUEUE)]
    assert need("sqs", "DeleteMessageBatch", QueueUrl=url, Entries=[]) == [
        ("sqs:DeleteMessage", QUEUE)
    ]
    assert need("sqs", "GetQueueUrl", QueueName="p-item-imports") == [("sqs:GetQueueUrl", QUEUE)]


def test_a_queue_in_another_region_is_named_by_its_url() -> None:
    url = f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/q"
    assert need("sqs", "SendMessage", QueueUrl=url) == [
        ("sqs:SendMessage", f"arn:aws:sqs:eu-west-1:{ACCOUNT}:q")
    ]


def test_secrets_by_name_partial_arn_or_arn_resolve_to_the_arn_with_its_suffix() -> None:
    partial = ARN % ("secretsmanager", "secret:p/connections/default")
    for secret_id in ("p/connections/default", partial, SECRET):
        [found] = needed("secretsmanager", "GetSecretValue", {"SecretId": secret_id}, WHERE)
        assert (found.action, found.resource, found.named) == (
            "secretsmanager:GetSecretValue",
            SECRET,
            SECRET if secret_id != partial else partial,
        )
    # No such secret: asked about its partial ARN, which no real secret's ARN is; named as given
    [missing] = needed("secretsmanager", "GetSecretValue", {"SecretId": "p/nope"}, WHERE)
    assert (missing.resource, missing.named) == (
        ARN % ("secretsmanager", "secret:p/nope"),
        "p/nope",
    )


def test_events_each_bus_of_a_put_once_and_lambda_functions_by_any_name() -> None:
    entries = [{"EventBusName": "p-bus"}, {"EventBusName": "p-bus"}, {}]
    assert need("events", "PutEvents", Entries=entries) == [
        ("events:PutEvents", ARN % ("events", "event-bus/p-bus")),
        ("events:PutEvents", ARN % ("events", "event-bus/default")),
    ]
    function = ARN % ("lambda", "function:p-redrive")
    for name in ("p-redrive", f"{ACCOUNT}:function:p-redrive", function):
        assert need("lambda", "Invoke", FunctionName=name) == [("lambda:InvokeFunction", function)]
    assert need("lambda", "Invoke", FunctionName="p-redrive", Qualifier="live") == [
        ("lambda:InvokeFunction", f"{function}:live")
    ]
    assert need("sts", "GetCallerIdentity") == [("sts:GetCallerIdentity", "*")]


# --- the hook ------------------------------------------------------------------------------------
ROLE = Role(
    "RoleLogicalId",
    "p-StatusApiRole-ABCDEF123456",
    f"arn:aws:iam::{ACCOUNT}:role/p-StatusApiRole-ABCDEF123456",
    (
        {"Effect": "Allow", "Action": ["dynamodb:GetItem", "dynamodb:Query"], "Resource": LEDGER},
        {"Effect": "Allow", "Action": "sqs:*", "Resource": QUEUE},
        {"Effect": "Deny", "Action": "sqs:PurgeQueue", "Resource": "*"},
    ),
)
CALLER = Caller("p-status-api", ROLE, WHERE)
PRINCIPAL = f"arn:aws:sts::{ACCOUNT}:assumed-role/p-StatusApiRole-ABCDEF123456/p-status-api"


@pytest.fixture
def recorded() -> list[tuple[str, str, str, Decision]]:
    return []


def client(service: str, enforcer: Enforcer) -> Any:
    made = boto3.session.Session().client(
        service,  # type: ignore[call-overload]
        region_name=REGION,
        endpoint_url="http://127.0.0.1:9",  # the discard port: were anything sent, it fails
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"max_attempts": 1}),
    )
    enforcer.attach(made.meta.events)
    return made


@pytest.fixture
def dynamodb(recorded: list[Any]) -> Any:
    def record(caller: Caller, need: Needed, decision: Decision) -> None:
        recorded.append((caller.function, need.action, need.resource, decision))

    return client("dynamodb", Enforcer(lambda: (CALLER,), record))


def answered(made: Any, operation: str, response: dict[str, Any]) -> Stubber:
    """A stub answer for one allowed call (a refused one never reaches the Stubber)."""
    stubber = Stubber(made)
    stubber.add_response(operation, response)
    return stubber


def test_a_refused_call_gets_the_services_answer_and_is_never_sent(
    dynamodb: Any, recorded: list[Any]
) -> None:
    with pytest.raises(ClientError) as refused:
        dynamodb.delete_item(TableName="p-ledger", Key={"pk": {"S": "1"}})

    response = refused.value.response
    assert response["Error"] == {
        "Code": "AccessDeniedException",
        "Message": f"User: {PRINCIPAL} is not authorized to perform: dynamodb:DeleteItem on "
        f"resource: {LEDGER} because no identity-based policy allows the dynamodb:DeleteItem "
        "action",
    }
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["ResponseMetadata"]["RetryAttempts"] == 0
    assert recorded == [("p-status-api", "dynamodb:DeleteItem", LEDGER, Decision.IMPLICIT_DENY)]


def test_an_allowed_call_goes_on_to_the_service(dynamodb: Any, recorded: list[Any]) -> None:
    with answered(dynamodb, "get_item", {"Item": {"pk": {"S": "1"}}}):
        answer = dynamodb.get_item(TableName="p-ledger", Key={"pk": {"S": "1"}})

    assert answer["Item"] == {"pk": {"S": "1"}}
    assert recorded == [("p-status-api", "dynamodb:GetItem", LEDGER, Decision.ALLOW)]


def test_a_transaction_is_refused_for_its_first_item_the_role_does_not_allow(
    dynamodb: Any,
) -> None:
    items = [
        {"ConditionCheck": {"TableName": "p-ledger", "Key": {}, "ConditionExpression": "x"}},
        {"Update": {"TableName": "p-state", "Key": {}, "UpdateExpression": "SET a = :a"}},
    ]

    with pytest.raises(ClientError, match=r"dynamodb:ConditionCheckItem on resource: .*p-ledger"):
        dynamodb.transact_write_items(TransactItems=items)


def test_sqs_refuses_in_its_own_words_and_an_explicit_deny_says_so() -> None:
    other = ARN % ("sqs", "p-account-imports")
    sqs = client("sqs", Enforcer(lambda: (CALLER,)))

    with pytest.raises(ClientError) as refused:
        sqs.send_message(QueueUrl=f"http://x/{ACCOUNT}/p-account-imports", MessageBody="{}")
    with pytest.raises(ClientError) as purge:
        sqs.purge_queue(QueueUrl=f"http://x/{ACCOUNT}/p-item-imports")

    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert refused.value.response["Error"]["Message"] == (
        f"User: {PRINCIPAL} is not authorized to perform: sqs:sendmessage on resource: "
        f"{other} because no identity-based policy allows the sqs:sendmessage action"
    )
    assert purge.value.response["Error"]["Message"] == (
        f"User: {PRINCIPAL} is not authorized to perform: sqs:purgequeue on resource: "
        f"{QUEUE} with an explicit deny in an identity-based policy"
    )


def test_nobodys_calls_pass_and_any_of_several_roles_may_allow() -> None:
    nothing = Role("R2", "p-ItemRole", "arn:aws:iam::1:role/p-ItemRole", ())
    item = Caller("p-item-import", nothing, WHERE)
    nobodys = client("sqs", Enforcer(lambda: ()))
    either = client("dynamodb", Enforcer(lambda: (item, CALLER)))

    with answered(nobodys, "purge_queue", {}):
        nobodys.purge_queue(QueueUrl=f"http://x/{ACCOUNT}/p-item-imports")
    with answered(either, "get_item", {}):
        either.get_item(TableName="p-ledger", Key={"pk": {"S": "1"}})
    # Refused by them all: the first one says so
    with pytest.raises(ClientError, match="assumed-role/p-ItemRole/p-item-import is not"):
        either.put_item(TableName="p-ledger", Item={"pk": {"S": "1"}})


def test_the_role_file_a_container_reads_holds_the_caller(tmp_path: Any) -> None:
    path = tmp_path / "role.json"
    write_role_file(path, CALLER, {"p/connections/default": SECRET}, tmp_path / "calls.jsonl")

    caller, record = read_role_file(path)

    assert (caller.function, caller.role, caller.principal) == (CALLER.function, ROLE, PRINCIPAL)
    assert caller.where.secret_arn("p/connections/default") == SECRET
    assert record == tmp_path / "calls.jsonl"
