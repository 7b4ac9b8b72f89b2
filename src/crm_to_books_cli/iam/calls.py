"""Which IAM action(s), on which resource(s), one AWS API call needs, and how its service says no.

`needed(prefix, operation, params, where)` reads the call's own parameters, as botocore has them
before serializing: a DynamoDB table (or its index) by name or ARN, and each item of a
transaction with its own action on its own table (IAM has no `TransactWriteItems` action); an
SQS queue by URL; a Secrets Manager secret by name, partial ARN or full ARN (a name is looked up
to the ARN with its random suffix); each EventBridge bus of a `PutEvents`; a Lambda function by
name or ARN. An operation without a mapped resource is asked about `*`: a role that grants only
named resources refuses it, as it should.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

# A transaction's items, by the action each needs (IAM: "Using IAM with DynamoDB transactions").
TRANSACTION_ITEMS = {
    "Put": "PutItem",
    "Update": "UpdateItem",
    "Delete": "DeleteItem",
    "ConditionCheck": "ConditionCheckItem",
    "Get": "GetItem",
}
# Batch operations SQS authorizes as their single-message action.
SQS_BATCHES = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}
LAMBDA_INVOKES = {"Invoke", "InvokeAsync", "InvokeWithResponseStream"}


@dataclass(frozen=True)
class Refusal:
    """How a service answers a call IAM refused: its error code and HTTP status."""

    code: str = "AccessDeniedException"
    status: int = 400
    lowercase_action: bool = False  # SQS names the action in lower case in its message


REFUSALS = {
    "dynamodb": Refusal(),
    "secretsmanager": Refusal(),
    "events": Refusal(),
    "sqs": Refusal("AccessDenied", 403, lowercase_action=True),
    "lambda": Refusal(status=403),
}


@dataclass(frozen=True)
class Where:
    """The account the calls are made in, and how to find a secret's full ARN from its name."""

    partition: str
    region: str
    account: str
    secret_arn: Callable[[str], str | None] = lambda name: None

    def arn(self, service: str, resource: str, region: str | None = None) -> str:
        region = self.region if region is None else region
        return f"arn:{self.partition}:{service}:{region}:{self.account}:{resource}"


@dataclass(frozen=True)
class Needed:
    """One authorization a call needs: `action` on `resource`, with condition keys `context`;
    `shown` is the resource as the service names it in its refusal."""

    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()
    shown: str = ""

    @property
    def named(self) -> str:
        return self.shown or self.resource


def needed(prefix: str, operation: str, params: Mapping[str, Any], where: Where) -> list[Needed]:
    """Every authorization the call needs (all must be allowed), in order, without repeats."""
    mapper = _MAPPERS.get(prefix)
    found = list(mapper(operation, params, where)) if mapper else []
    if not found:
        found = [Needed(f"{prefix}:{operation}", "*")]
    return list(dict.fromkeys(found))


def _is_arn(value: str) -> bool:
    return value.startswith("arn:")


# --- DynamoDB ------------------------------------------------------------------------------------
def _table(name: str, where: Where, index: str | None = None) -> str:
    arn = name if _is_arn(name) else where.arn("dynamodb", f"table/{name}")
    return f"{arn}/index/{index}" if index else arn


def _dynamodb(operation: str, params: Mapping[str, Any], where: Where) -> Iterator[Needed]:
    if operation in {"TransactWriteItems", "TransactGetItems"}:
        enclosing = (("dynamodb:EnclosingOperation", operation),)
        for item in params.get("TransactItems", []):
            for kind, body in item.items():
                action = f"dynamodb:{TRANSACTION_ITEMS[kind]}"
                yield Needed(action, _table(body["TableName"], where), enclosing)
        return
    if operation in {"BatchWriteItem", "BatchGetItem"}:
        for table in params.get("RequestItems", {}):
            yield Needed(f"dynamodb:{operation}", _table(table, where))
        return
    table = params.get("TableName") or params.get("TableArn") or params.get("ResourceArn")
    if table:
        yield Needed(f"dynamodb:{operation}", _table(table, where, params.get("IndexName")))


# --- SQS -----------------------------------------------------------------------------------------
def queue_arn(url: str, where: Where) -> str:
    """`https://sqs.<region>.amazonaws.com/<account>/<name>` (or a local endpoint's
    `http://host:port/<account>/<name>`) as the queue's ARN."""
    parsed = urlparse(url)
    account, _, name = parsed.path.strip("/").partition("/")
    host = parsed.hostname or ""
    region = host.split(".")[1] if host.startswith("sqs.") and host.count(".") >= 2 else None
    return f"arn:{where.partition}:sqs:{region or where.region}:{account}:{name}"


def _sqs(operation: str, params: Mapping[str, Any], where: Where) -> Iterator[Needed]:
    action = f"sqs:{SQS_BATCHES.get(operation, operation)}"
    if "QueueUrl" in params:
        yield Needed(action, queue_arn(params["QueueUrl"], where))
    elif "QueueName" in params:
        account = params.get("QueueOwnerAWSAccountId") or where.account
        arn = f"arn:{where.partition}:sqs:{where.region}:{account}:{params['QueueName']}"
        yield Needed(action, arn)


# --- Secrets Manager -----------------------------------------------------------------------------
def _secret(secret_id: str, where: Where) -> tuple[str, str]:
    """(ARN, as the refusal names it): a full ARN as given; a name or partial ARN looked up,
    else (no such secret) the partial ARN, which no grant of a real secret's ARN matches."""
    if _is_arn(secret_id):
        name = secret_id.split(":", 6)[6]
        found = where.secret_arn(name)
        return (found or secret_id), secret_id
    found = where.secret_arn(secret_id)
    return (found or where.arn("secretsmanager", f"secret:{secret_id}")), (found or secret_id)


def _secretsmanager(operation: str, params: Mapping[str, Any], where: Where) -> Iterator[Needed]:
    secret_id = params.get("SecretId") or params.get("Name")
    if secret_id:
        arn, shown = _secret(secret_id, where)
        yield Needed(f"secretsmanager:{operation}", arn, shown=shown)


# --- EventBridge ---------------------------------------------------------------------------------
def _bus(name: str, where: Where) -> str:
    return name if _is_arn(name) else where.arn("events", f"event-bus/{name}")


def _events(operation: str, params: Mapping[str, Any], where: Where) -> Iterator[Needed]:
    if operation == "PutEvents":
        for entry in params.get("Entries", []):
            yield Needed("events:PutEvents", _bus(entry.get("EventBusName") or "default", where))
        return
    bus = params.get("EventBusName")
    if bus:
        yield Needed(f"events:{operation}", _bus(bus, where))


# --- Lambda --------------------------------------------------------------------------------------
def function_arn(name: str, where: Where, qualifier: str | None = None) -> str:
    """A function's ARN from its name, partial ARN (`account:function:name`) or ARN."""
    if _is_arn(name):
        arn = name
    elif ":function:" in name:
        account, _, rest = name.partition(":function:")
        arn = f"arn:{where.partition}:lambda:{where.region}:{account}:function:{rest}"
    else:
        arn = where.arn("lambda", f"function:{name}")
    return f"{arn}:{qualifier}" if qualifier and arn.count(":") == 6 else arn


def _lambda(operation: str, params: Mapping[str, Any], where: Where) -> Iterator[Needed]:
    name = params.get("FunctionName")
    if name:
        action = "lambda:InvokeFunction" if operation in LAMBDA_INVOKES else f"lambda:{operation}"
        yield Needed(action, function_arn(name, where, params.get("Qualifier")))


_MAPPERS: dict[str, Callable[[str, Mapping[str, Any], Where], Iterator[Needed]]] = {
    "dynamodb": _dynamodb,
    "sqs": _sqs,
    "secretsmanager": _secretsmanager,
    "events": _events,
    "lambda": _lambda,
}
