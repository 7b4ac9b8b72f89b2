"""The AWS calls each function's code makes, by resource: what its IAM role must allow.

One list, kept beside the code that makes the calls. The stack grants exactly these (plus what
Lambda itself needs: its log group, X-Ray, the event source's reads); `tests/infra` reads the
library's code to find the calls it really makes, and checks them against both this list and the
synthesized template, so a call added without its grant fails a test, not a customer.

A transaction (`TransactWriteItems`) needs the action of each item it holds (`Update` needs
`dynamodb:UpdateItem`, `Delete` needs `dynamodb:DeleteItem`, ...) on each item's table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Resource(StrEnum):
    LEDGER = "ledger"  # the ledger table and its status index
    STATE = "state"  # the state table: tokens, limiter, connection marks
    CONNECTIONS_USED = "connections_used"  # the secrets of the connections organizations use
    CONNECTIONS_ALL = "connections_all"  # every connection's secret
    BUS = "bus"  # the service's event bus
    OWN_QUEUE = "own_queue"  # the import function's own kind queue
    KIND_QUEUES = "kind_queues"  # every kind's queue


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
}


def actions_by_resource(handler_dir: str) -> dict[Resource, tuple[str, ...]]:
    """Every action a function's code performs, by resource (sorted, no duplicates)."""
    found: dict[Resource, set[str]] = {}
    for calls in CALLS[handler_dir]:
        found.setdefault(calls.resource, set()).update(calls.actions)
    return {resource: tuple(sorted(actions)) for resource, actions in found.items()}
