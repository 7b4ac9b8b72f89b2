"""The bench's moto stays all-or-nothing with item-wise transaction backups (bench/world.py)."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from bench.world import _transactions_back_up_their_items

TABLE = "t"


def _item(client: Any, pk: str) -> Any:
    return client.get_item(TableName=TABLE, Key={"pk": {"S": pk}}).get("Item")


def test_a_cancelled_transaction_puts_back_what_it_wrote_before_it_failed() -> None:
    with _transactions_back_up_their_items(), mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        for pk in ("a", "b"):
            client.put_item(TableName=TABLE, Item={"pk": {"S": pk}, "n": {"N": "1"}})
        writes = [
            {
                "Update": {
                    "TableName": TABLE,
                    "Key": {"pk": {"S": "a"}},
                    "UpdateExpression": "SET n = :two",
                    "ExpressionAttributeValues": {":two": {"N": "2"}},
                }
            },
            {"Put": {"TableName": TABLE, "Item": {"pk": {"S": "new"}}}},
            {
                "Update": {
                    "TableName": TABLE,
                    "Key": {"pk": {"S": "b"}},
                    "UpdateExpression": "SET n = :two",
                    "ConditionExpression": "n = :zero",
                    "ExpressionAttributeValues": {":two": {"N": "2"}, ":zero": {"N": "0"}},
                }
            },
        ]

        with pytest.raises(ClientError, match="TransactionCanceled"):
            client.transact_write_items(TransactItems=writes)

        assert _item(client, "a") == {"pk": {"S": "a"}, "n": {"N": "1"}}
        assert _item(client, "b") == {"pk": {"S": "b"}, "n": {"N": "1"}}
        assert _item(client, "new") is None

        client.transact_write_items(TransactItems=writes[:2])
        assert _item(client, "a") == {"pk": {"S": "a"}, "n": {"N": "2"}}
        assert _item(client, "new") == {"pk": {"S": "new"}}
