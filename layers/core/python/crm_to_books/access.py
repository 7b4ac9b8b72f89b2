"""The AWS calls each function's code makes, by resource: what its IAM role must allow.

One list, kept beside the code that makes the calls. The stack grants exactly these, plus what
Lambda itself does with the role (`FOR_LAMBDA`: its log group, X-Ray, the event source's reads);
`tests/infra` reads the library's code to find the calls it really makes, and checks them
against both this list and the synthesized template, so a call added without its grant fails a
test, not a customer. The local stack enforces each role on every call, and
`tests/test_iam_exercised.py` checks that the test suites exercised every grant, or that
`FOR_LAMBDA` says why no local test can.

A transaction (`TransactWriteItems`) needs the action of each item it holds (`Update` needs
`dynamodb:UpdateItem`, `Delete` needs `dynamodb:DeleteItem`, ...) on each item's table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from crm_to_books.topology import FunctionSpec


class Resource(StrEnum):
    LEDGER = "ledger"  # the ledger table and its status index
    STATE = "state"  # the state table: tokens, limiter, connection marks
    CONNECTIONS_USED = "connections_used"  # the secrets of the connections organizations use
    CONNECTIONS_ALL = "connections_all"  # every connection's secret
    BUS = "bus"  # the service's event bus
    OWN_QUEUE = "own_queue"  # the import function's own kind queue
    KIND_QUEUES = "kind_queues"  # every kind's queue
    CHANNEL_SECRETS = "channel_secrets"  # the CRM notification channels' token secrets


@dataclass(frozen=True, slots=True)
class Calls:
    """The calls one piece of the library makes on one resource.

    `code` is a module (`batch`), a class (`ledger.Ledger`) or a module function
    (`tokens.powertools_secret_loader`); `methods` narrows a class to those methods (and what
    they call on `self`)."""

    code: str
    resource: Resource
    actions: tuple[str, ...]
    methods: tuple[str, ...] = ()


_LEDGER = Calls(
    "ledger.Ledger",
    Resource.LEDGER,
    (
        "dynamodb:DeleteItem",  # abandon: a new record the attempt must not leave behind
        "dynamodb:GetItem",
        "dynamodb:PutItem",  # abandon: the record as it was
        "dynamodb:Query",
        "dynamodb:UpdateItem",
    ),
)
# The permit's release rides in the ledger's transaction as an `Update` of the limiter item.
_LIMITER = Calls(
    "limiter.RateLimiter",
    Resource.STATE,
    ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"),
)
_TOKENS = Calls("tokens.TokenProvider", Resource.STATE, ("dynamodb:GetItem", "dynamodb:UpdateItem"))
_SECRETS = "tokens.powertools_secret_loader"
_GET_SECRET = ("secretsmanager:GetSecretValue",)
_ENQUEUE = "intake.Intake.enqueue"

# By handler folder (`FunctionSpec.handler_dir`): the four import functions share one.
CALLS: dict[str, tuple[Calls, ...]] = {
    "importer": (
        _LEDGER,
        _LIMITER,
        _TOKENS,
        Calls(_SECRETS, Resource.CONNECTIONS_USED, _GET_SECRET),
        Calls("events.OutcomePublisher", Resource.BUS, ("events:PutEvents",)),
        Calls("intake.Intake", Resource.OWN_QUEUE, ("sqs:SendMessage",)),  # async requests
        # Delays (visibility), fresh requeues, and the queue's own maxReceiveCount.
        Calls(
            "batch",
            Resource.OWN_QUEUE,
            ("sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes", "sqs:SendMessage"),
        ),
    ),
    "status_api": (
        Calls(
            "ledger.Ledger",
            Resource.LEDGER,
            ("dynamodb:GetItem", "dynamodb:Query"),
            methods=("get", "list"),
        ),
    ),
    "token_keeper": (_TOKENS, Calls(_SECRETS, Resource.CONNECTIONS_ALL, _GET_SECRET)),
    "redrive": (
        Calls(
            "ledger.Ledger",
            Resource.LEDGER,
            ("dynamodb:Query", "dynamodb:UpdateItem"),
            methods=("due", "abandoned", "unpark"),
        ),
        # Has a connection's cause gone (repaired, scope granted)? The state alone: no secret.
        Calls("tokens.TokenProvider", Resource.STATE, ("dynamodb:GetItem",), methods=("state",)),
        Calls(_ENQUEUE, Resource.KIND_QUEUES, ("sqs:SendMessage",)),
    ),
    "sweep": (
        # Which found records are imported already (batched reads); nothing else of the ledger.
        Calls("ledger.succeeded_among", Resource.LEDGER, ("dynamodb:BatchGetItem",)),
        _TOKENS,
        Calls(_SECRETS, Resource.CONNECTIONS_USED, _GET_SECRET),
        Calls("crm_gate.CrmGate", Resource.STATE, ("dynamodb:UpdateItem",)),
        Calls("sweep.SweepStore", Resource.STATE, ("dynamodb:GetItem", "dynamodb:UpdateItem")),
        Calls("channels.ChannelRegistry", Resource.STATE, ("dynamodb:GetItem", "dynamodb:PutItem")),
        Calls(
            "channels.ChannelSecrets",
            Resource.CHANNEL_SECRETS,
            (
                "secretsmanager:CreateSecret",
                "secretsmanager:DeleteSecret",
                "secretsmanager:GetSecretValue",
            ),
        ),
        Calls(_ENQUEUE, Resource.KIND_QUEUES, ("sqs:SendMessage",)),
    ),
    # A public route: it reads channel tokens and queues imports, nothing else.
    "crm_hooks": (
        Calls(
            "channels.ChannelSecrets",
            Resource.CHANNEL_SECRETS,
            ("secretsmanager:GetSecretValue",),
            methods=("read",),
        ),
        Calls(_ENQUEUE, Resource.KIND_QUEUES, ("sqs:SendMessage",)),
    ),
}


@dataclass(frozen=True, slots=True)
class ForLambda:
    """What the stack grants a function's role for Lambda itself, not for the function's code:
    `actions` on `resource` (`LOG_GROUP`, `ANY`, or the function's own queue). `not_local`: those
    no local test can exercise, and why (the local stack has no such service)."""

    actions: tuple[str, ...]
    resource: str
    why: str
    not_local: tuple[tuple[str, str], ...] = ()


LOG_GROUP = "log_group"  # the function's own log group
ANY = "*"
_NO_LOGS = "the local stack prints a container's output; it has no CloudWatch Logs"
_NO_XRAY = "the local stack has no X-Ray: tracing is off in its containers"

# Every function.
FOR_LAMBDA = (
    ForLambda(
        ("logs:CreateLogStream", "logs:PutLogEvents"),
        LOG_GROUP,
        "Lambda writes the function's output to its log group",
        (("logs:CreateLogStream", _NO_LOGS), ("logs:PutLogEvents", _NO_LOGS)),
    ),
    ForLambda(
        ("xray:PutTelemetryRecords", "xray:PutTraceSegments"),
        ANY,  # X-Ray has no resource-level permissions
        "active tracing: Lambda and the function's tracer send its segments",
        (("xray:PutTelemetryRecords", _NO_XRAY), ("xray:PutTraceSegments", _NO_XRAY)),
    ),
)
# An import function's queue: Lambda's event source polls it with the function's role (the
# local stack's poller does too). CDK's SqsEventSource grants what consuming a queue takes.
EVENT_SOURCE = ForLambda(
    (
        "sqs:ChangeMessageVisibility",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
        "sqs:ReceiveMessage",
    ),
    Resource.OWN_QUEUE,
    "Lambda's SQS poller receives and deletes the function's batches with its role",
    (("sqs:GetQueueUrl", "part of CDK's consume grant: the poller knows the queue by its ARN"),),
)


def for_lambda(spec: FunctionSpec) -> tuple[ForLambda, ...]:
    """What Lambda does with a function's role (an import function's queue triggers it)."""
    return (*FOR_LAMBDA, EVENT_SOURCE) if spec.kind else FOR_LAMBDA


def actions_by_resource(handler_dir: str) -> dict[Resource, tuple[str, ...]]:
    """Every action a function's code performs, by resource (sorted, no duplicates)."""
    found: dict[Resource, set[str]] = {}
    for calls in CALLS[handler_dir]:
        found.setdefault(calls.resource, set()).update(calls.actions)
    return {resource: tuple(sorted(actions)) for resource, actions in found.items()}
