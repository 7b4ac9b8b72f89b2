"""The ledger and state tables: keys from topology, PITR, encryption, deletion protection; and
what every stateful resource with a fixed name becomes when its stack goes."""

from __future__ import annotations

import pytest

from crm_to_books import topology

# Stateful types and the property holding a fixed name (CloudFormation can import them all).
STATEFUL_NAMED = [
    ("AWS::DynamoDB::Table", "TableName"),
    ("AWS::SecretsManager::Secret", "Name"),
    ("AWS::SQS::Queue", "QueueName"),
    ("AWS::Logs::LogGroup", "LogGroupName"),
]


def _table(synth, name):
    (found,) = [
        (lid, p)
        for lid, p in synth.of_type("AWS::DynamoDB::Table").items()
        if p["TableName"] == name
    ]
    return found


def test_ledger_keys_and_index(synth):
    _, ledger = _table(synth, synth.names.ledger_table)
    assert ledger["KeySchema"] == [
        {"AttributeName": topology.LEDGER_PARTITION_KEY, "KeyType": "HASH"},
        {"AttributeName": topology.LEDGER_SORT_KEY, "KeyType": "RANGE"},
    ]
    (index,) = ledger["GlobalSecondaryIndexes"]
    assert index == {
        "IndexName": topology.LEDGER_STATUS_INDEX,
        "KeySchema": [
            {"AttributeName": topology.LEDGER_STATUS_INDEX_PARTITION_KEY, "KeyType": "HASH"},
            {"AttributeName": topology.LEDGER_STATUS_INDEX_SORT_KEY, "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "ALL"},
    }
    assert "StreamSpecification" not in ledger  # off unless configured


def test_state_table_has_no_ttl_nothing_writes(synth):
    _, state = _table(synth, synth.names.state_table)
    key = {"AttributeName": topology.STATE_PARTITION_KEY, "KeyType": "HASH"}
    assert state["KeySchema"] == [key]
    assert "TimeToLiveSpecification" not in state


def test_tables_are_protected_from_deletion(synth):
    for name in (synth.names.ledger_table, synth.names.state_table):
        _, table = _table(synth, name)
        assert table["DeletionProtectionEnabled"] is True, name


@pytest.mark.parametrize(("type_", "name_property"), STATEFUL_NAMED)
def test_stateful_resources_with_fixed_names_are_kept_except_when_creation_fails(
    synth, type_, name_property
):
    # Kept when the stack is deleted (a new stack adopts them: cdk deploy
    # --import-existing-resources), deleted when the first creation rolls back, so the retry
    # never meets "already exists".
    named = {
        lid: props[name_property]
        for lid, props in synth.of_type(type_).items()
        if isinstance(props.get(name_property), str)
    }
    assert named, f"no {type_} with a fixed name: is this list still right?"
    for lid, name in named.items():
        resource = synth.resources[lid]
        assert resource["DeletionPolicy"] == "RetainExceptOnCreate", name
        assert resource["UpdateReplacePolicy"] == "Retain", name


def test_every_fixed_name_is_static(synth):
    # CloudFormation adopts a retained resource only by a static name (no Ref or Fn::*).
    for type_, name_property in STATEFUL_NAMED:
        for lid, props in synth.of_type(type_).items():
            if name_property in props:
                assert isinstance(props[name_property], str), (lid, props[name_property])


def test_tables_are_on_demand_recoverable_and_encrypted(synth):
    for name in (synth.names.ledger_table, synth.names.state_table):
        _, table = _table(synth, name)
        assert table["BillingMode"] == "PAY_PER_REQUEST"
        assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert table["SSESpecification"]["SSEEnabled"] is True


def test_one_secret_per_connection_with_placeholder_keys(synth):
    secrets = synth.of_type("AWS::SecretsManager::Secret").values()
    assert sorted(s["Name"] for s in secrets) == sorted(
        synth.names.connection_secret(name) for name in ("main", "eu", "spare")
    )
    for secret in secrets:
        template = secret["GenerateSecretString"]["SecretStringTemplate"]
        for key in ("client_id", "client_secret", "refresh_token", "accounts_url"):
            assert f'"{key}"' in template
