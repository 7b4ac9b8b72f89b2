"""cdk-nag acknowledgments, always on one construct, with a reason."""

from __future__ import annotations

from aws_cdk import Acknowledgment, CfnElement, Stack, Validations
from constructs import IConstruct

XRAY_REASON = "X-Ray's PutTraceSegments and PutTelemetryRecords take no resource-level permissions"


def acknowledge(scope: IConstruct, reason: str, *rules: str) -> None:
    """Acknowledge each cdk-nag finding (`Rule[Finding]`) on `scope` and its children."""
    Validations.of(scope).acknowledge(*(Acknowledgment(id=rule, reason=reason) for rule in rules))


def arn_finding(resource: IConstruct, suffix: str) -> str:
    """cdk-nag's name for a wildcard resource built from `resource`'s ARN, e.g. `<Fn.Arn>:*`."""
    element = resource.node.default_child
    if not isinstance(element, CfnElement):
        raise TypeError(f"{resource.node.path} has no CloudFormation resource")
    logical_id = Stack.of(resource).get_logical_id(element)
    return f"AwsSolutions-IAM5[Resource::<{logical_id}.Arn>{suffix}]"
