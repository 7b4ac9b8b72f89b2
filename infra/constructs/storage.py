"""The import ledger and the state table (token cache, rate limiter, connection marks).

Both have fixed names: kept when the stack is deleted (`KEEP_NAMED`), protected from deletion.
Who may call what on them: `crm_to_books.access`.
"""

from __future__ import annotations

from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from crm_to_books import topology
from crm_to_books.access import Resource
from crm_to_books.topology import Names, TableSpec
from infra.constructs.removal import KEEP_NAMED


def _string(name: str) -> dynamodb.Attribute:
    return dynamodb.Attribute(name=name, type=dynamodb.AttributeType.STRING)


class Storage(Construct):
    def __init__(self, scope: Construct, id: str, *, names: Names, ledger_stream: bool) -> None:
        super().__init__(scope, id)
        # The durable record of every import: it outlives the stack.
        self.ledger = self._table(
            "Ledger",
            names.ledger_table,
            topology.LEDGER_TABLE,
            stream=dynamodb.StreamViewType.NEW_AND_OLD_IMAGES if ledger_stream else None,
        )
        # No TTL: every item is rewritten by its owner, or read as stale (a limiter item from
        # before yesterday is empty). Kept with the rest: broken connections and Zoho's token
        # blocks must outlive a redeploy.
        self.state = self._table("State", names.state_table, topology.STATE_TABLE)

    def _table(
        self,
        id: str,
        name: str,
        spec: TableSpec,
        stream: dynamodb.StreamViewType | None = None,
    ) -> dynamodb.Table:
        """The table `spec` defines (the one definition the local stack and tests build too)."""
        table = dynamodb.Table(
            self,
            id,
            table_name=name,
            partition_key=_string(spec.partition_key),
            sort_key=_string(spec.sort_key) if spec.sort_key else None,
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            stream=stream,
            removal_policy=KEEP_NAMED,
            deletion_protection=True,
        )
        for index, partition_key, sort_key in spec.indexes:
            table.add_global_secondary_index(
                index_name=index,
                partition_key=_string(partition_key),
                sort_key=_string(sort_key),
                projection_type=dynamodb.ProjectionType.ALL,
            )
        return table

    @property
    def indexes(self) -> dict[Resource, list[str]]:
        """The ledger's status index: what queries by status read."""
        return {Resource.LEDGER: [f"{self.ledger.table_arn}/index/{topology.LEDGER_STATUS_INDEX}"]}
