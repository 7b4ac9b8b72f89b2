"""A synthesized template resolved as CloudFormation would resolve it in one account and region.

`Resolved(template, env)` gives every `Ref`, `Fn::GetAtt`, `Fn::Join`, `Fn::Sub`, `Fn::Select`
and `Fn::Split` a concrete value: the physical names the template gives, or one shaped like
CloudFormation's where it names nothing (`{stack}-{logical id}-{suffix}`), in the partition,
region and account of `env`. `arns` replaces the ARN of given resources by the one a service
really gave them (a secret's random suffix). `roles()` gives each function's execution role with
every identity-based statement attached to it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Where a type keeps its physical name.
_NAME_PROPERTY = {
    "AWS::SQS::Queue": "QueueName",
    "AWS::SNS::Topic": "TopicName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::DynamoDB::Table": "TableName",
    "AWS::SecretsManager::Secret": "Name",
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
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
    "AWS::SecretsManager::Secret": "arn:{p}:secretsmanager:{r}:{a}:secret:{name}-{suffix}",
    "AWS::IAM::Role": "arn:{p}:iam::{a}:role/{name}",
    "AWS::IAM::ManagedPolicy": "arn:{p}:iam::{a}:policy/{name}",
    "AWS::KMS::Key": "arn:{p}:kms:{r}:{a}:key/{lid}-key-id",
    "AWS::Events::EventBus": "arn:{p}:events:{r}:{a}:event-bus/{name}",
    "AWS::Events::Rule": "arn:{p}:events:{r}:{a}:rule/{bus}{name}",
    "AWS::Logs::LogGroup": "arn:{p}:logs:{r}:{a}:log-group:{name}:*",
    "AWS::CloudWatch::Alarm": "arn:{p}:cloudwatch:{r}:{a}:alarm:{name}",
    "AWS::Scheduler::Schedule": "arn:{p}:scheduler:{r}:{a}:schedule/{group}/{name}",
}
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _suffix(seed: str, length: int) -> str:
    """A stand-in for the random part CloudFormation or a service adds, stable per seed."""
    digest = hashlib.sha256(seed.encode()).digest()
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:length])


@dataclass(frozen=True)
class Env:
    partition: str = "aws"
    region: str = "eu-west-1"
    account: str = "111122223333"

    @property
    def url_suffix(self) -> str:
        return "amazonaws.com.cn" if self.partition == "aws-cn" else "amazonaws.com"


@dataclass(frozen=True)
class Role:
    """A function's execution role: who it is, and every identity-based statement it holds."""

    logical_id: str
    name: str
    arn: str
    statements: tuple[Mapping[str, Any], ...]


class Resolved:
    def __init__(
        self,
        template: Mapping[str, Any],
        env: Env,
        *,
        stack_name: str = "stack",
        arns: Mapping[str, str] | None = None,
    ) -> None:
        self.template = template
        self.resources: Mapping[str, Mapping[str, Any]] = template["Resources"]
        self.env = env
        self.stack_name = stack_name
        self.arns = dict(arns or {})  # logical id -> the ARN a service gave it

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
        """The physical name: the template's, else one shaped like CloudFormation's."""
        resource = self.resources[lid]
        prop = _NAME_PROPERTY.get(resource["Type"])
        given = resource.get("Properties", {}).get(prop) if prop else None
        if given is not None:
            return str(self.resolve(given))
        return f"{self.stack_name}-{lid}"[:51] + "-" + _suffix(lid, 12)

    def ref(self, name: str) -> str:
        pseudo = {
            "AWS::Partition": self.env.partition,
            "AWS::Region": self.env.region,
            "AWS::AccountId": self.env.account,
            "AWS::URLSuffix": self.env.url_suffix,
            "AWS::StackName": self.stack_name,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.template.get("Parameters", {}):
            return f"parameter-{name}"
        type_ = self.resources[name]["Type"]
        if type_ == "AWS::SQS::Queue":
            e = self.env
            return f"https://sqs.{e.region}.{e.url_suffix}/{e.account}/{self.name(name)}"
        if type_ in {
            "AWS::SNS::Topic",
            "AWS::SecretsManager::Secret",
            "AWS::Lambda::LayerVersion",
            "AWS::IAM::ManagedPolicy",
        }:
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
        if lid in self.arns:
            return self.arns[lid]
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
            suffix=_suffix(lid, 6),
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
        """The role's identity-based statements: its inline policies, every `AWS::IAM::Policy`
        naming it, and the managed policies of this template attached to it (by the role's
        `ManagedPolicyArns` or the policy's `Roles`). An AWS managed policy (not in the
        template) adds nothing: its document is unknown here, so nothing it allows is allowed."""
        props = self.resources[role_id]["Properties"]
        ref = {"Ref": role_id}
        documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
        documents += [
            p["PolicyDocument"]
            for p in self.of_type("AWS::IAM::Policy").values()
            if ref in p.get("Roles", [])
        ]
        attached = set(self.resolve(props.get("ManagedPolicyArns", [])))
        documents += [
            p["PolicyDocument"]
            for lid, p in self.of_type("AWS::IAM::ManagedPolicy").items()
            if ref in p.get("Roles", []) or self.attr(lid, "Arn") in attached
        ]
        return [s for d in documents for s in self.resolve(d)["Statement"]]

    def role(self, role_id: str) -> Role:
        statements = tuple(self.role_statements(role_id))
        return Role(role_id, self.name(role_id), self.attr(role_id, "Arn"), statements)

    def function_roles(self) -> dict[str, Role]:
        """Each function's execution role, by the function's physical name."""
        roles = {}
        for lid, props in self.of_type("AWS::Lambda::Function").items():
            role = props["Role"]
            if not (isinstance(role, dict) and "Fn::GetAtt" in role):
                raise NotImplementedError(f"{lid}: a role not made in this template")
            roles[self.name(lid)] = self.role(role["Fn::GetAtt"][0])
        return roles

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
