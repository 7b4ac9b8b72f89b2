"""The import ledger and the state table (token cache, rate limiter, connection marks).

Both have fixed names: kept when the stack is deleted (`KEEP_NAMED`), protected from deletion.
Who may call what on them: `crm_to_books.access`.
"""

from __future__ import annotations

from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from crm_to_books import topology
from crm_to_books.access import Resource
from crm_to_books.topology import Names
from infra.constructs.removal import KEEP_NAMED


def _string(name: str) -> dynamodb.Attribute:
    return dynamodb.Attribute(name=name, type=dynamodb.AttributeType.STRING)


class Storage(Construct):
    def __init__(self, scope: Construct, id: str, *, names: Names, ledger_stream: bool) -> None:
        super().__init__(scope, id)
        pitr = dynamodb.PointInTimeRecoverySpecification(point_in_time_recovery_enabled=True)
        self.ledger = dynamodb.Table(
            self,
            "Ledger",
            table_name=names.ledger_table,
            partition_key=_string(topology.LEDGER_PARTITION_KEY),
            sort_key=_string(topology.LEDGER_SORT_KEY),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=pitr,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            stream=dynamodb.StreamViewType.NEW_AND_OLD_IMAGES if ledger_stream else None,
            # The durable record of every import: it outlives the stack.
            removal_policy=KEEP_NAMED,
            deletion_protection=True,
        )
        self.ledger.add_global_secondary_index(
            index_name=topology.LEDGER_STATUS_INDEX,
            partition_key=_string(topology.LEDGER_STATUS_INDEX_PARTITION_KEY),
            sort_key=_string(topology.LEDGER_STATUS_INDEX_SORT_KEY),
            projection_type=dynamodb.ProjectionType.ALL,
        )
        self.state = dynamodb.Table(
            self,
            "State",
            table_name=names.state_table,
            partition_key=_string(topology.STATE_PARTITION_KEY),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=pitr,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            # No TTL: every item is rewritten by its owner, or read as stale (a limiter item
            # from before yesterday is empty). Kept with the stack's other state: broken
            # connections and Zoho's token blocks must outlive a redeploy.
            removal_policy=KEEP_NAMED,
            deletion_protection=True,
        )

    @property
    def indexes(self) -> dict[Resource, list[str]]:
        """The ledger's status index: what queries by status read."""
        return {Resource.LEDGER: [f"{self.ledger.table_arn}/index/{topology.LEDGER_STATUS_INDEX}"]}
