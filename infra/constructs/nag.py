"""cdk-nag acknowledgments, always on one construct, with a reason."""

from __future__ import annotations

from typing import Any

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


def as_nag_sees_it(scope: IConstruct, value: str) -> str:
    """`value` (a token, e.g. an ARN built with the partition and region) as cdk-nag writes it
    in a finding: literals as they are, `Ref` as `<Name>`, `Fn::GetAtt` as `<Id.Attr>`. The
    partition and region are literals when the CLI knows the environment, tokens otherwise."""
    return _render(Stack.of(scope).resolve(value))


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"<{value['Ref']}>"
    if "Fn::GetAtt" in value:
        return f"<{'.'.join(value['Fn::GetAtt'])}>"
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return str(separator).join(_render(part) for part in parts)
    raise TypeError(f"cannot name a cdk-nag finding for {value!r}")
