"""A synthesized template resolved as CloudFormation would resolve it in one account and region,
and IAM's evaluation of its policies: enough to ask "does the receiving side allow this call?".

`Resolved(template, env)` gives every `Ref`, `Fn::GetAtt`, `Fn::Join`, `Fn::Sub`, ... a concrete
value (physical names from the template, generated ones where it names nothing) in the partition,
region and account of `env`: a hard-coded `arn:aws:` then no longer matches in `aws-cn`.
`allows(statements, request)` is IAM's rule: some statement allows, none denies. Conditions
use the operators this stack uses; an unknown operator fails loudly rather than guess.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Where a type keeps its physical name, and what Ref and each attribute return.
_NAME_PROPERTY = {
    "AWS::SQS::Queue": "QueueName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SecretsManager::Secret": "Name",
    "AWS::IAM::Role": "RoleName",
    "AWS::Events::EventBus": "Name",
    "AWS::Events::Rule": "Name",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::CloudWatch::Alarm": "AlarmName",
    "AWS::Scheduler::Schedule": "Name",
    "AWS::ApiGateway::Stage": "StageName",
    "AWS::Lambda::LayerVersion": "LayerName",
}


_ARNS = {
    "AWS::SQS::Queue": "arn:{p}:sqs:{r}:{a}:{name}",
    "AWS::SNS::Topic": "arn:{p}:sns:{r}:{a}:{name}",
    "AWS::Lambda::Function": "arn:{p}:lambda:{r}:{a}:function:{name}",
    "AWS::Lambda::LayerVersion": "arn:{p}:lambda:{r}:{a}:layer:{name}:1",
    "AWS::DynamoDB::Table": "arn:{p}:dynamodb:{r}:{a}:table/{name}",
    "AWS::SecretsManager::Secret": "arn:{p}:secretsmanager:{r}:{a}:secret:{name}-AbCdEf",
    "AWS::IAM::Role": "arn:{p}:iam::{a}:role/{name}",
    "AWS::KMS::Key": "arn:{p}:kms:{r}:{a}:key/{lid}-key-id",
    "AWS::Events::EventBus": "arn:{p}:events:{r}:{a}:event-bus/{name}",
    "AWS::Events::Rule": "arn:{p}:events:{r}:{a}:rule/{bus}{name}",
    "AWS::Logs::LogGroup": "arn:{p}:logs:{r}:{a}:log-group:{name}:*",
    "AWS::CloudWatch::Alarm": "arn:{p}:cloudwatch:{r}:{a}:alarm:{name}",
    "AWS::Scheduler::Schedule": "arn:{p}:scheduler:{r}:{a}:schedule/{group}/{name}",
}


@dataclass(frozen=True)
class Env:
    partition: str = "aws"
    region: str = "eu-west-1"
    account: str = "111122223333"

    @property
    def url_suffix(self) -> str:
        return "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com"


ENVS = (
    Env(),
    Env("aws-cn", "cn-north-1", "222233334444"),
    Env("aws-us-gov", "us-gov-west-1", "333344445555"),
)


class Resolved:
    def __init__(self, template: Mapping[str, Any], env: Env) -> None:
        self.template = template
        self.resources: Mapping[str, Mapping[str, Any]] = template["Resources"]
        self.env = env

    # --- values -------------------------------------------------------------------------------
    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), *_ = value.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                lid, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.attr(lid, attr)
            if key == "Fn::Join":
                separator, parts = arg
                return separator.join(str(self.resolve(p)) for p in self.resolve(parts))
            if key == "Fn::Select":
                index, items = arg
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                separator, text = arg
                return str(self.resolve(text)).split(separator)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key.startswith("Fn::"):
                raise NotImplementedError(f"{key} is not resolved here: add it")
        return {k: self.resolve(v) for k, v in value.items()}

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else arg

        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return str(self.resolve(variables[name]))
            if "." in name and not name.startswith("AWS::"):
                lid, attr = name.split(".", 1)
                return str(self.attr(lid, attr))
            return str(self.ref(name))

        return re.sub(r"\$\{([^!}][^}]*)\}", one, text)

    def name(self, lid: str) -> str:
        """The physical name: the template's, else one CloudFormation would generate."""
        resource = self.resources[lid]
        prop = _NAME_PROPERTY.get(resource["Type"])
        given = resource.get("Properties", {}).get(prop) if prop else None
        return str(self.resolve(given)) if given is not None else f"stack-{lid}-GENERATED"

    def ref(self, name: str) -> str:
        pseudo = {
            "AWS::Partition": self.env.partition,
            "AWS::Region": self.env.region,
            "AWS::AccountId": self.env.account,
            "AWS::URLSuffix": self.env.url_suffix,
            "AWS::StackName": "stack",
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.template.get("Parameters", {}):
            return f"parameter-{name}"
        type_ = self.resources[name]["Type"]
        if type_ == "AWS::SQS::Queue":
            return f"https://sqs.{self.env.region}.{self.env.url_suffix}/{self.env.account}/{self.name(name)}"
        if type_ in {"AWS::SNS::Topic", "AWS::SecretsManager::Secret", "AWS::Lambda::LayerVersion"}:
            return self.attr(name, "Arn")
        return self.name(name)

    def attr(self, lid: str, attr: str) -> str:
        type_ = self.resources[lid]["Type"]
        if attr != "Arn" and not attr.endswith("Arn"):
            return {
                "QueueName": self.name(lid),
                "QueueUrl": self.ref(lid),
                "TopicName": self.name(lid),
                "Name": self.name(lid),
                "RootResourceId": f"{lid}-root",
                "KeyId": f"{lid}-key-id",
            }[attr]
        arn = self._arn(lid, type_)
        if attr in {"Arn", "TopicArn"}:
            return arn
        raise KeyError(f"{lid}.{attr}")

    def _arn(self, lid: str, type_: str) -> str:
        if type_ not in _ARNS:
            raise NotImplementedError(f"no ARN for {type_} here: add it")
        props = self.resources[lid].get("Properties", {})
        bus = props.get("EventBusName")
        e = self.env
        return _ARNS[type_].format(
            p=e.partition,
            r=e.region,
            a=e.account,
            name=self.name(lid),
            lid=lid,
            bus=f"{self.resolve(bus)}/" if type_ == "AWS::Events::Rule" and bus else "",
            group=props.get("GroupName", "default"),
        )

    # --- the template's parts ---------------------------------------------------------------------
    def of_type(self, type_: str) -> dict[str, Mapping[str, Any]]:
        return {
            lid: r.get("Properties", {}) for lid, r in self.resources.items() if r["Type"] == type_
        }

    def by_arn(self) -> dict[str, str]:
        """Physical ARN -> logical id, for every resource that has one here."""
        found = {}
        for lid, resource in self.resources.items():
            try:
                found[self._arn(lid, resource["Type"])] = lid
            except NotImplementedError:
                continue
        return found

    def role_statements(self, role_id: str) -> list[dict[str, Any]]:
        """The role's identity-based statements (inline policies and attached AWS::IAM::Policy)."""
        props = self.resources[role_id]["Properties"]
        if props.get("ManagedPolicyArns"):
            raise NotImplementedError(f"{role_id}: managed policies are not evaluated here")
        documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
        documents += [
            p["PolicyDocument"]
            for p in self.of_type("AWS::IAM::Policy").values()
            if {"Ref": role_id} in p.get("Roles", [])
        ]
        return [s for d in documents for s in self.resolve(d)["Statement"]]

    def trust(self, role_id: str) -> list[dict[str, Any]]:
        document = self.resources[role_id]["Properties"]["AssumeRolePolicyDocument"]
        return list(self.resolve(document)["Statement"])

    def resource_policy(self, type_: str, key: str, target: str) -> list[dict[str, Any]]:
        """Statements of every policy resource of `type_` whose `key` lists `target`'s Ref."""
        return [
            s
            for p in self.of_type(type_).values()
            if {"Ref": target} in p[key]
            for s in self.resolve(p["PolicyDocument"])["Statement"]
        ]


# --- IAM evaluation -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    service: str | None = None  # the calling AWS service's principal, for resource policies
    context: Mapping[str, str] = field(default_factory=dict)  # aws:SourceArn, ...

    def with_transport(self) -> Request:
        """Every delivery between AWS services travels over TLS."""
        return Request(
            self.action,
            self.resource,
            self.service,
            {"aws:SecureTransport": "true", **self.context},
        )


def _pattern(text: str, case: bool = True) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text)
    return re.compile(f"^{body}$", 0 if case else re.IGNORECASE)


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _any_match(patterns: Iterable[str], value: str, case: bool = True) -> bool:
    return any(_pattern(str(p), case).match(value) for p in patterns)


_OPERATORS = {
    "StringEquals": lambda want, got: got in want,
    "StringLike": _any_match,
    "ArnEquals": lambda want, got: got in want,
    "ArnLike": _any_match,
    "Bool": lambda want, got: got.lower() in [str(w).lower() for w in want],
}


def _conditions_hold(conditions: Mapping[str, Mapping[str, Any]], request: Request) -> bool:
    for operator, tests in conditions.items():
        if operator not in _OPERATORS:
            raise NotImplementedError(f"condition operator {operator} is not evaluated here")
        for key, want in tests.items():
            got = request.context.get(key)
            if got is None or not _OPERATORS[operator](_listed(want), got):
                return False
    return True


def _principal_matches(principal: Any, request: Request) -> bool:
    if principal is None:  # identity-based policy
        return True
    if principal == "*":
        return True
    if isinstance(principal, dict):
        if "*" in _listed(principal.get("AWS", [])):
            return True
        return request.service in _listed(principal.get("Service", []))
    return False


def _applies(statement: Mapping[str, Any], request: Request) -> bool:
    if "Action" in statement:
        if not _any_match(_listed(statement["Action"]), request.action, case=False):
            return False
    elif _any_match(_listed(statement["NotAction"]), request.action, case=False):
        return False
    if "Resource" in statement:
        if not _any_match(_listed(statement["Resource"]), request.resource):
            return False
    elif "NotResource" in statement and _any_match(
        _listed(statement["NotResource"]), request.resource
    ):
        return False
    return _principal_matches(statement.get("Principal"), request) and _conditions_hold(
        statement.get("Condition", {}), request
    )


def allows(statements: Iterable[Mapping[str, Any]], request: Request) -> bool:
    """IAM's rule within one policy set: an explicit Deny wins, else some Allow is needed."""
    request = request.with_transport()
    applicable = [s for s in statements if _applies(s, request)]
    return any(s["Effect"] == "Allow" for s in applicable) and not any(
        s["Effect"] == "Deny" for s in applicable
    )


def granted(statements: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """Every (action, resource) an identity policy's Allow statements name, as written."""
    return {
        (str(action), str(resource))
        for s in statements
        if s["Effect"] == "Allow"
        for action in _listed(s["Action"])
        for resource in _listed(s["Resource"])
    }


def dumps(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True)
