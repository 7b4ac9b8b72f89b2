"""The import ledger and the state table (token cache, rate limiter, locks)."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from constructs import Construct

from crm_to_books import topology
from crm_to_books.topology import Names

# Scoped actions: no Scan, no batch writes, no table management.
READ = ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query")
WRITE = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem")
DELETE = ("dynamodb:DeleteItem",)


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
            removal_policy=RemovalPolicy.RETAIN,
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
            time_to_live_attribute=topology.STATE_TTL_ATTRIBUTE,
            # Tokens, limiter windows and locks: all rebuilt on demand.
            removal_policy=RemovalPolicy.DESTROY,
        )

    def grant_ledger_read(self, grantee: iam.IGrantable) -> None:
        self._grant(grantee, self.ledger, READ, index=topology.LEDGER_STATUS_INDEX)

    def grant_ledger_read_write(self, grantee: iam.IGrantable) -> None:
        self._grant(grantee, self.ledger, READ + WRITE, index=topology.LEDGER_STATUS_INDEX)

    def grant_state_read(self, grantee: iam.IGrantable) -> None:
        self._grant(grantee, self.state, READ)

    def grant_state_read_write(self, grantee: iam.IGrantable) -> None:
        self._grant(grantee, self.state, READ + WRITE + DELETE)

    @staticmethod
    def _grant(
        grantee: iam.IGrantable,
        table: dynamodb.Table,
        actions: tuple[str, ...],
        index: str | None = None,
    ) -> None:
        resources = [table.table_arn]
        if index:
            resources.append(f"{table.table_arn}/index/{index}")
        iam.Grant.add_to_principal(grantee=grantee, actions=list(actions), resource_arns=resources)
