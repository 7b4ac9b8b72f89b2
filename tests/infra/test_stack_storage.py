"""The ledger and state tables: keys from topology, PITR, encryption, TTL, retention."""

from __future__ import annotations

from crm_to_books import topology


def _table(synth, name):
    (found,) = [
        (lid, p)
        for lid, p in synth.of_type("AWS::DynamoDB::Table").items()
        if p["TableName"] == name
    ]
    return found


def test_ledger_keys_index_and_retention(synth):
    lid, ledger = _table(synth, synth.names.ledger_table)
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
    assert synth.resources[lid]["DeletionPolicy"] == "Retain"
    assert synth.resources[lid]["UpdateReplacePolicy"] == "Retain"
    assert "StreamSpecification" not in ledger  # off unless configured


def test_state_table_expires_items(synth):
    _, state = _table(synth, synth.names.state_table)
    key = {"AttributeName": topology.STATE_PARTITION_KEY, "KeyType": "HASH"}
    assert state["KeySchema"] == [key]
    assert state["TimeToLiveSpecification"] == {
        "AttributeName": topology.STATE_TTL_ATTRIBUTE,
        "Enabled": True,
    }


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
