"""The resources the local stack provisions match topology, as the CDK stack builds them."""

from __future__ import annotations

import json

from crm_to_books import topology
from crm_to_books.entities import KINDS
from crm_to_books_cli.local import LocalStack


def test_queues_have_their_dlq_and_the_stacks_settings(local_stack: LocalStack) -> None:
    sqs = local_stack.client("sqs")
    for kind in KINDS:
        url = local_stack.queue_urls[kind]
        assert url.endswith(f"/e2e-{kind}-imports")
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        dlq = sqs.get_queue_attributes(QueueUrl=local_stack.dlq_urls[kind], AttributeNames=["All"])[
            "Attributes"
        ]
        redrive = json.loads(attributes["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
        assert dlq["QueueArn"].endswith(f":e2e-{kind}-imports-dlq")
        assert int(redrive["maxReceiveCount"]) == local_stack.max_receive_count
        assert int(attributes["VisibilityTimeout"]) == local_stack.visibility_timeout
        assert int(dlq["MessageRetentionPeriod"]) == topology.DLQ_RETENTION_DAYS * 86400


def test_tables_have_the_key_schema_and_index_and_nothing_expires(local_stack: LocalStack) -> None:
    dynamodb = local_stack.client("dynamodb")
    ledger = dynamodb.describe_table(TableName="e2e-ledger")["Table"]
    assert {(k["AttributeName"], k["KeyType"]) for k in ledger["KeySchema"]} == {
        (topology.LEDGER_PARTITION_KEY, "HASH"),
        (topology.LEDGER_SORT_KEY, "RANGE"),
    }
    (index,) = ledger["GlobalSecondaryIndexes"]
    assert index["IndexName"] == topology.LEDGER_STATUS_INDEX
    assert [k["AttributeName"] for k in index["KeySchema"]] == [
        topology.LEDGER_STATUS_INDEX_PARTITION_KEY,
        topology.LEDGER_STATUS_INDEX_SORT_KEY,
    ]
    # Tokens, limiter items and checkpoints are kept until replaced: no TTL deletes them.
    ttl = dynamodb.describe_time_to_live(TableName="e2e-state")["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "DISABLED"


def test_the_bus_routes_import_requests_by_kind(local_stack: LocalStack) -> None:
    events = local_stack.client("events")
    rules = events.list_rules(EventBusName="e2e-bus")["Rules"]
    assert len(rules) == len(KINDS)
    for rule in rules:
        (target,) = events.list_targets_by_rule(Rule=rule["Name"], EventBusName="e2e-bus")[
            "Targets"
        ]
        kind = json.loads(rule["EventPattern"])["detail"]["kind"][0]
        assert json.loads(rule["EventPattern"]) == topology.import_requested_pattern(kind)
        assert target["Arn"].endswith(f":e2e-{kind}-imports")


def test_the_connection_secret_holds_the_sandbox_account(local_stack: LocalStack) -> None:
    sandbox = local_stack.sandbox
    assert sandbox is not None
    secret = local_stack.client("secretsmanager").get_secret_value(
        SecretId="e2e/connections/default"
    )
    assert json.loads(secret["SecretString"]) == {
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
        "refresh_token": sandbox.refresh_token,
        "accounts_url": sandbox.url,
    }
    assert local_stack.settings is not None
    assert sorted(local_stack.settings.organizations) == sorted(sandbox.organizations)
