"""Create the stack's resources in the emulator, from `topology` (the names `infra/` uses).

Idempotent: provisioning again (same process, same prefix) updates what exists.
"""

from __future__ import annotations

import json
import secrets as secrets_module
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from crm_to_books import topology
from crm_to_books.entities import KINDS
from crm_to_books_cli.local.emulator import Emulator


@dataclass(frozen=True, slots=True)
class Resources:
    queue_urls: dict[str, str]  # kind -> URL
    queue_arns: dict[str, str]
    dlq_urls: dict[str, str]
    event_bus_arn: str


def provision(
    emulator: Emulator,
    names: topology.Names,
    *,
    visibility_timeout: int = topology.QUEUE_VISIBILITY_TIMEOUT_SECONDS,
    max_receive_count: int = topology.MAX_RECEIVE_COUNT,
) -> Resources:
    queue_urls, queue_arns, dlq_urls = {}, {}, {}
    sqs = emulator.client("sqs")
    for kind in KINDS:
        dlq_urls[kind], dlq_arn = _queue(
            sqs,
            names.dlq(kind),
            MessageRetentionPeriod=str(topology.DLQ_RETENTION_DAYS * 24 * 3600),
        )
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receive_count}
        queue_urls[kind], queue_arns[kind] = _queue(
            sqs,
            names.queue(kind),
            VisibilityTimeout=str(visibility_timeout),
            RedrivePolicy=json.dumps(redrive),
        )
    _tables(emulator.client("dynamodb"), names)
    bus_arn = _bus(emulator.client("events"), names, queue_arns)
    return Resources(queue_urls, queue_arns, dlq_urls, bus_arn)


def _queue(sqs: Any, name: str, **attributes: str) -> tuple[str, str]:
    url: str = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return url, arn["Attributes"]["QueueArn"]


def _tables(dynamodb: Any, names: topology.Names) -> None:
    existing = set(dynamodb.list_tables()["TableNames"])
    for name, spec in names.tables.items():
        if name not in existing:
            dynamodb.create_table(**spec.create_table_request(name))


def _bus(events: Any, names: topology.Names, queue_arns: dict[str, str]) -> str:
    buses = {b["Name"]: b["Arn"] for b in events.list_event_buses()["EventBuses"]}
    arn: str = (
        buses.get(names.event_bus) or events.create_event_bus(Name=names.event_bus)["EventBusArn"]
    )
    for kind, queue_arn in queue_arns.items():
        rule = f"{names.prefix}-{kind}-import-requested"
        pattern = topology.import_requested_pattern(kind)
        events.put_rule(Name=rule, EventBusName=names.event_bus, EventPattern=json.dumps(pattern))
        events.put_targets(
            Rule=rule, EventBusName=names.event_bus, Targets=[{"Id": "queue", "Arn": queue_arn}]
        )
    return arn


# What the stack's connection secrets hold until `crm-to-books connect` fills them
# (infra/constructs/connections.py).
PLACEHOLDER = dict.fromkeys(("client_id", "client_secret", "refresh_token", "accounts_url"), "")


def connection_secrets(emulator: Emulator, secret_ids: Iterable[str]) -> dict[str, str]:
    """Every connection's secret, as the stack creates them (with placeholders where none
    exists yet): their ARNs by name, with the random suffix Secrets Manager gave them."""
    secrets = emulator.client("secretsmanager")
    arns = {}
    for secret_id in sorted(set(secret_ids)):
        try:
            arns[secret_id] = secrets.describe_secret(SecretId=secret_id)["ARN"]
        except secrets.exceptions.ResourceNotFoundException:
            body = json.dumps({**PLACEHOLDER, "placeholder": secrets_module.token_hex(16)})
            arns[secret_id] = secrets.create_secret(Name=secret_id, SecretString=body)["ARN"]
    return arns


def store_connection_secret(emulator: Emulator, secret_id: str, value: dict[str, str]) -> None:
    """Write a connection's secret JSON (created, or a new version if it exists)."""
    secrets = emulator.client("secretsmanager")
    body = json.dumps(value)
    try:
        secrets.create_secret(Name=secret_id, SecretString=body)
    except secrets.exceptions.ResourceExistsException:
        secrets.put_secret_value(SecretId=secret_id, SecretString=body)
