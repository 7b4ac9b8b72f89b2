"""A function's role allows the AWS calls its code makes (`crm_to_books.access`), nothing more."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import aws_iam as iam

from crm_to_books import access
from crm_to_books.access import Resource
from crm_to_books.topology import FunctionSpec

QUERY = "dynamodb:Query"


def grant_calls(
    role: iam.IRole,
    spec: FunctionSpec,
    arns: Mapping[Resource, Sequence[str]],
    indexes: Mapping[Resource, Sequence[str]],
) -> None:
    """One statement per resource the function's code calls, with exactly its actions; a
    table's `indexes` get `dynamodb:Query` when the function queries the table."""
    for resource, actions in access.actions_by_resource(spec.handler_dir).items():
        if not arns.get(resource):
            raise ValueError(f"{spec.name}: its code calls {resource.value}, which has no ARN")
        statements = [iam.PolicyStatement(actions=list(actions), resources=list(arns[resource]))]
        if QUERY in actions and indexes.get(resource):
            statements.append(
                iam.PolicyStatement(actions=[QUERY], resources=list(indexes[resource]))
            )
        for statement in statements:
            role.add_to_principal_policy(statement)
