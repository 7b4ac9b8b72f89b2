"""The local stack refuses what a function's role does not allow, the way AWS refuses it.

Each function's containers and event source enforce its role from the synthesized template
(`crm_to_books_cli.local.iam`). Taking `dynamodb:DeleteItem` away from the account import
function makes the named scenario of test_service_imports (a synchronous import rate-limited
on a new record) fail with AccessDeniedException, and it passes again with the real role. The
fake functions make AWS calls of every service the stack uses, to see each service's refusal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from crm_to_books_cli.iam.policy import revoke
from crm_to_books_cli.local import LocalStack
from tests.e2e.helpers import THROTTLED_ORG, Logs
from tests.e2e.test_service_imports import record, sync_import_told_to_retry

pytestmark = pytest.mark.timeout(90)
ACCOUNT = "123456789012"


def assumed_role(stack: LocalStack, function: str) -> str:
    name = stack.function_name(function)
    assert stack.iam is not None
    role = stack.iam.caller(name).role.name
    return f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{name}"


@pytest.fixture
def without_delete_item(local_stack: LocalStack) -> Iterator[None]:
    """The account import function's role as the template gives it, but no DeleteItem."""
    assert local_stack.iam is not None
    name = local_stack.function_name("account-import")
    real = local_stack.iam.caller(name).role.statements
    local_stack.iam.replace_statements(name, revoke(real, "dynamodb:DeleteItem"))
    try:
        yield
    finally:
        local_stack.iam.replace_statements(name, real)


def test_without_delete_item_the_rate_limited_sync_import_fails_with_access_denied(
    local_stack: LocalStack, local_stack_logs: Logs, without_delete_item: None
) -> None:
    # When the named scenario runs with the role missing dynamodb:DeleteItem
    answer, crm_id = sync_import_told_to_retry(local_stack)

    # Then the caller gets a 500 instead of a 429, and the function's log says why, as AWS does
    assert answer.status_code == 500, answer.text
    function = local_stack.function_name("account-import")
    ledger = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/{local_stack.names.ledger_table}"
    expected = (
        f"User: {assumed_role(local_stack, 'account-import')} is not authorized to perform: "
        f"dynamodb:DeleteItem on resource: {ledger} because no identity-based policy allows "
        "the dynamodb:DeleteItem action"
    )
    # (only this test takes DeleteItem away: the one such line is this request's)
    [logged] = local_stack_logs.wait_for(
        function, where=lambda r: expected in r.get("exception", "")
    )
    # the Delete inside the transaction that releases the limiter's permit
    assert "(AccessDeniedException) when calling the TransactWriteItems" in logged["exception"]
    # (The attempt's record stays behind: the redrive job takes it once its lease runs out.)
    assert record(local_stack, "account", crm_id, THROTTLED_ORG) is not None


def test_with_the_real_role_the_same_scenario_answers_429(local_stack: LocalStack) -> None:
    answer, crm_id = sync_import_told_to_retry(local_stack)

    assert answer.status_code == 429, answer.text
    assert record(local_stack, "account", crm_id, THROTTLED_ORG) is None


# --- each service's refusal, from inside a container ---------------------------------------------
def call(service: str, operation: str, **params: Any) -> dict[str, Any]:
    return {"service": service, "operation": operation, "params": params}


def errors(fake_stack: LocalStack, function: str, *calls: dict[str, Any]) -> list[Any]:
    """What each call answered inside a container of `function` (None: it went through)."""
    invocation = fake_stack.invoke(function, {"aws": list(calls)})
    assert invocation.ok, invocation.error
    return list(invocation.result["errors"])


def test_a_function_is_refused_what_its_role_does_not_allow_in_each_services_words(
    fake_stack: LocalStack,
) -> None:
    names, user = fake_stack.names, assumed_role(fake_stack, "status-api")
    ledger, key = names.ledger_table, {"pk": {"S": "ORG#1"}, "sk": {"S": "item#1"}}
    check = {"TableName": ledger, "Key": key, "ConditionExpression": "attribute_exists(pk)"}
    event = {"EventBusName": names.event_bus, "Source": "x", "DetailType": "y", "Detail": "{}"}
    secret = names.connection_secret("default")
    redrive = fake_stack.function_name("redrive")

    # When the status API's code tries what its role (reads of the ledger) does not allow
    answers = errors(
        fake_stack,
        "status-api",
        call("dynamodb", "delete_item", TableName=ledger, Key=key),
        call("dynamodb", "transact_write_items", TransactItems=[{"ConditionCheck": check}]),
        call("sqs", "send_message", QueueUrl=fake_stack.queue_urls["item"], MessageBody="{}"),
        call("secretsmanager", "get_secret_value", SecretId=secret),
        call("events", "put_events", Entries=[event]),
        call("lambda", "invoke", FunctionName=redrive),
        call("dynamodb", "get_item", TableName=ledger, Key=key),
    )

    # Then each service refuses with its own code, HTTP status and AWS's message, naming the
    # resource by its ARN (a secret's with its random suffix), as the exception botocore raises
    # for that code (EventBridge's model has its own); what the role allows goes through
    def refused(code: str, status: int, action: str, resource: str) -> dict[str, Any]:
        message = (
            f"User: {user} is not authorized to perform: {action} on resource: {resource} "
            f"because no identity-based policy allows the {action} action"
        )
        modeled = code if action.startswith("events:") else "ClientError"
        return {"code": code, "status": status, "message": message, "type": modeled}

    table = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/{ledger}"
    queue = f"arn:aws:sqs:us-east-1:{ACCOUNT}:{names.queue('item')}"
    bus = f"arn:aws:events:us-east-1:{ACCOUNT}:event-bus/{names.event_bus}"
    function = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:{redrive}"
    secret_arn = fake_stack.client("secretsmanager").describe_secret(SecretId=secret)["ARN"]
    assert answers == [
        refused("AccessDeniedException", 400, "dynamodb:DeleteItem", table),
        refused("AccessDeniedException", 400, "dynamodb:ConditionCheckItem", table),
        refused("AccessDenied", 403, "sqs:sendmessage", queue),
        refused("AccessDeniedException", 400, "secretsmanager:GetSecretValue", secret_arn),
        refused("AccessDeniedException", 400, "events:PutEvents", bus),
        refused("AccessDeniedException", 403, "lambda:InvokeFunction", function),
        None,
    ]


def test_each_function_has_its_own_role(fake_stack: LocalStack) -> None:
    names = fake_stack.names
    read = call("secretsmanager", "get_secret_value", SecretId=names.connection_secret("default"))
    depth = call("sqs", "get_queue_attributes", QueueUrl=fake_stack.queue_urls["item"])
    state = call("dynamodb", "get_item", TableName=names.state_table, Key={"pk": {"S": "x"}})

    # The item import function reads its connection and its own queue; the account import
    # function may not read the item queue; the re-drive job reads the state, but no secret
    assert errors(fake_stack, "item-import", read, depth) == [None, None]
    [other_queue] = errors(fake_stack, "account-import", depth)
    assert other_queue is not None and other_queue["code"] == "AccessDenied"
    secret, state_read = errors(fake_stack, "redrive", read, state)
    assert secret["code"] == "AccessDeniedException" and state_read is None
