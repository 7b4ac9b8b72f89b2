"""Every service-to-service delivery the template sets up is allowed by the side that receives it.

The edges are found in the template, not listed here: every alarm action, every bus rule's
target and dead-letter queue, every schedule's target and dead-letter queue, every API method's
integration, every queue's event source, every function's log group, and the account-level
role API Gateway writes logs with. An edge of a kind this file does not know fails the test, so
a new one cannot go unchecked. Each is evaluated as IAM would (explicit Deny wins; resource
policy or role as AWS uses for that delivery) in three partitions, and a delivery from a foreign
source must be refused where the grant is scoped by source.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from tests.infra.policy import ENVS, Env, Request, Resolved, allows

FOREIGN_ACCOUNT = "999999999999"
CLOUDWATCH = "cloudwatch.amazonaws.com"
LOG_WRITES = ("logs:CreateLogStream", "logs:PutLogEvents")
POLLER = ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes")
_FUNCTION_IN_URI = re.compile(r"/functions/(arn:[^/]+)/invocations$")


@dataclass(frozen=True)
class Edge:
    what: str  # e.g. "alarm X -> topic Y"
    ok: bool
    foreign_refused: bool = True  # the same delivery from another account or resource


class Walk:
    def __init__(self, template: dict[str, Any], env: Env) -> None:
        self.t = Resolved(template, env)
        self.env = env
        self.arns = self.t.by_arn()

    def target(self, arn: str) -> tuple[str, str]:
        lid = self.arns.get(arn)
        if lid is None:
            raise LookupError(f"{arn} is not a resource of this template")
        return lid, self.t.resources[lid]["Type"]

    def context(self, source_arn: str, account: str | None = None) -> dict[str, str]:
        return {"aws:SourceArn": source_arn, "aws:SourceAccount": account or self.env.account}

    def foreign(self, source_arn: str) -> dict[str, str]:
        return self.context(source_arn.replace(self.env.account, FOREIGN_ACCOUNT), FOREIGN_ACCOUNT)

    # --- resource policies as the receiving service reads them ---------------------------------
    def queue_allows(self, queue_id: str, request: Request) -> bool:
        props = self.t.resources[queue_id]["Properties"]
        if "KmsMasterKeyId" in props:
            raise NotImplementedError(f"{queue_id}: a KMS-encrypted queue's key is not checked")
        policy = self.t.resource_policy("AWS::SQS::QueuePolicy", "Queues", queue_id)
        return allows(policy, request)

    def no_queue_deny(self, queue_id: str, request: Request) -> bool:
        """Same-account callers with a role: the queue policy must not deny them."""
        policy = self.t.resource_policy("AWS::SQS::QueuePolicy", "Queues", queue_id)
        return allows([*policy, _allow_all()], request)

    def topic_allows(self, topic_id: str, request: Request) -> bool:
        policy = self.t.resource_policy("AWS::SNS::TopicPolicy", "Topics", topic_id)
        return allows(policy, request)

    def key_allows(self, key_id: str, request: Request) -> bool:
        policy = self.t.resolve(self.t.resources[key_id]["Properties"]["KeyPolicy"])
        return allows(policy["Statement"], request)

    def lambda_allows(self, function_id: str, request: Request) -> bool:
        function_arn = self.t.attr(function_id, "Arn")
        statements = []
        for props in self.t.of_type("AWS::Lambda::Permission").values():
            name = self.t.resolve(props["FunctionName"])
            if name not in {function_arn, self.t.name(function_id)}:
                continue
            condition: dict[str, dict[str, str]] = {}
            if "SourceArn" in props:
                condition["ArnLike"] = {"aws:SourceArn": self.t.resolve(props["SourceArn"])}
            if "SourceAccount" in props:
                condition["StringEquals"] = {"aws:SourceAccount": props["SourceAccount"]}
            statements.append(
                {
                    "Effect": "Allow",
                    "Principal": {"Service": self.t.resolve(props["Principal"])},
                    "Action": props["Action"],
                    "Resource": function_arn,
                    "Condition": condition,
                }
            )
        return allows(statements, request)

    def role_may(
        self, role_arn: str, service: str, actions: tuple[str, ...], arn: str, source: str = ""
    ) -> bool:
        """`service` may assume the role (as from `source`) and the role may do `actions`."""
        role_id, _ = self.target(role_arn)
        context = self.context(source) if source else {"aws:SourceAccount": self.env.account}
        assume = Request("sts:AssumeRole", role_arn, service, context)
        statements = self.t.role_statements(role_id)
        return allows(self.t.trust(role_id), assume) and all(
            allows(statements, Request(a, arn)) for a in actions
        )

    # --- the edges ----------------------------------------------------------------------------
    def edges(self) -> Iterator[Edge]:
        yield from self.alarm_actions()
        yield from self.rule_targets()
        yield from self.schedule_targets()
        yield from self.api_integrations()
        yield from self.event_sources()
        yield from self.function_logs()
        yield from self.api_gateway_logs()

    def alarm_actions(self) -> Iterator[Edge]:
        for alarm_id, props in self.t.of_type("AWS::CloudWatch::Alarm").items():
            for key in ("AlarmActions", "OKActions", "InsufficientDataActions"):
                for action in self.t.resolve(props.get(key, [])):
                    yield self._alarm_to_topic(alarm_id, action)

    def _alarm_to_topic(self, alarm_id: str, topic_arn: str) -> Edge:
        """CloudWatch publishes as the alarm; an encrypted topic needs the key's use too."""
        topic_id, type_ = self.target(topic_arn)
        if type_ != "AWS::SNS::Topic":
            raise NotImplementedError(f"alarm action to {type_}: add its check")
        alarm_arn = self.t.attr(alarm_id, "Arn")
        calls = [(self.topic_allows, topic_id, Request("sns:Publish", topic_arn, CLOUDWATCH))]
        master_key = self.t.resources[topic_id]["Properties"].get("KmsMasterKeyId")
        if master_key is not None:
            key_id, _ = self.target(self.t.resolve(master_key))
            key_arn = self.t.attr(key_id, "Arn")
            calls += [
                (self.key_allows, key_id, Request(action, key_arn, CLOUDWATCH))
                for action in ("kms:GenerateDataKey", "kms:Decrypt")
            ]
        ok = all(check(lid, replace(r, context=self.context(alarm_arn))) for check, lid, r in calls)
        refused = not any(
            check(lid, replace(r, context=self.foreign(alarm_arn))) for check, lid, r in calls
        )
        return Edge(f"alarm {self.t.name(alarm_id)} -> topic {topic_id}", ok, refused)

    def _to_queue(self, source_arn: str, queue_arn: str, what: str) -> Edge:
        queue_id, type_ = self.target(queue_arn)
        if type_ != "AWS::SQS::Queue":
            raise NotImplementedError(f"{what}: a target of type {type_}: add its check")
        send = Request("sqs:SendMessage", queue_arn, "events.amazonaws.com")
        ok = self.queue_allows(queue_id, replace(send, context=self.context(source_arn)))
        refused = not self.queue_allows(queue_id, replace(send, context=self.foreign(source_arn)))
        return Edge(f"{what} -> queue {self.t.name(queue_id)}", ok, refused)

    def rule_targets(self) -> Iterator[Edge]:
        for rule_id, props in self.t.of_type("AWS::Events::Rule").items():
            rule_arn = self.t.attr(rule_id, "Arn")
            for target in props.get("Targets", []):
                if "RoleArn" in target:
                    raise NotImplementedError(f"{rule_id}: a target with a role: add its check")
                arn = self.t.resolve(target["Arn"])
                _, type_ = self.target(arn)
                if type_ != "AWS::SQS::Queue":
                    raise NotImplementedError(f"rule target of type {type_}: add its check")
                yield self._to_queue(rule_arn, arn, f"rule {rule_id}")
                dlq = target.get("DeadLetterConfig", {}).get("Arn")
                if dlq is not None:
                    yield self._to_queue(rule_arn, self.t.resolve(dlq), f"rule {rule_id} (DLQ)")

    def schedule_targets(self) -> Iterator[Edge]:
        actions = {
            "AWS::SQS::Queue": ("sqs:SendMessage",),
            "AWS::Lambda::Function": ("lambda:InvokeFunction",),
        }
        e = self.env
        for schedule_id, props in self.t.of_type("AWS::Scheduler::Schedule").items():
            target = props["Target"]
            # Scheduler assumes the role as its schedule group (its aws:SourceArn).
            group = props.get("GroupName", "default")
            source = f"arn:{e.partition}:scheduler:{e.region}:{e.account}:schedule-group/{group}"
            role_arn = self.t.resolve(target["RoleArn"])
            arn = self.t.resolve(target["Arn"])
            target_id, type_ = self.target(arn)
            if type_ not in actions:
                raise NotImplementedError(f"schedule target of type {type_}: add its check")
            ok = self.role_may(role_arn, "scheduler.amazonaws.com", actions[type_], arn, source)
            if type_ == "AWS::SQS::Queue":
                ok &= self.no_queue_deny(target_id, Request("sqs:SendMessage", arn))
            yield Edge(f"schedule {schedule_id} -> {type_} {target_id}", ok)
            dlq = target.get("DeadLetterConfig", {}).get("Arn")
            if dlq is not None:
                dlq_arn = self.t.resolve(dlq)
                dlq_id, _ = self.target(dlq_arn)
                send = ("sqs:SendMessage",)
                ok = self.role_may(role_arn, "scheduler.amazonaws.com", send, dlq_arn, source)
                ok &= self.no_queue_deny(dlq_id, Request("sqs:SendMessage", dlq_arn))
                yield Edge(f"schedule {schedule_id} -> DLQ {dlq_id}", ok)

    def _paths(self) -> dict[str, str]:
        resources = self.t.of_type("AWS::ApiGateway::Resource")

        def path(lid: str) -> str:
            parent = resources[lid]["ParentId"]
            prefix = path(parent["Ref"]) if "Ref" in parent else ""
            return f"{prefix}/{resources[lid]['PathPart']}"

        return {lid: path(lid) for lid in resources}

    def api_integrations(self) -> Iterator[Edge]:
        paths = self._paths()
        (stage,) = self.t.of_type("AWS::ApiGateway::Stage").values()
        stage_name = stage["StageName"]
        for method_id, props in self.t.of_type("AWS::ApiGateway::Method").items():
            integration = props.get("Integration", {})
            if integration.get("Type") == "MOCK":
                continue
            if integration.get("Type") != "AWS_PROXY":
                raise NotImplementedError(f"{method_id}: integration {integration.get('Type')}")
            uri = self.t.resolve(integration["Uri"])
            function_arn = _FUNCTION_IN_URI.search(uri)
            assert function_arn, uri
            function_id, _ = self.target(function_arn.group(1))
            api = self.t.resolve(props["RestApiId"])
            resource = props["ResourceId"]
            path = paths[resource["Ref"]] if "Ref" in resource else "/"
            concrete = re.sub(r"\{[^}]+\}", "4000000000123", path)
            e = self.env
            base = f"arn:{e.partition}:execute-api:{e.region}:{e.account}"
            call = f"{base}:{api}/{stage_name}/{props['HttpMethod']}{concrete}"
            other_api = f"{base}:otherapi01/{stage_name}/{props['HttpMethod']}{concrete}"
            invoke = Request(
                "lambda:InvokeFunction", function_arn.group(1), "apigateway.amazonaws.com"
            )
            ok = self.lambda_allows(function_id, replace(invoke, context=self.context(call)))
            refused = not self.lambda_allows(
                function_id, replace(invoke, context=self.context(other_api))
            )
            yield Edge(f"API {props['HttpMethod']} {path} -> {function_id}", ok, refused)

    def event_sources(self) -> Iterator[Edge]:
        for props in self.t.of_type("AWS::Lambda::EventSourceMapping").values():
            queue_arn = self.t.resolve(props["EventSourceArn"])
            queue_id, type_ = self.target(queue_arn)
            if type_ != "AWS::SQS::Queue":
                raise NotImplementedError(f"event source of type {type_}: add its check")
            function_id = props["FunctionName"]["Ref"]
            role_id = self.t.resources[function_id]["Properties"]["Role"]["Fn::GetAtt"][0]
            statements = self.t.role_statements(role_id)
            ok = all(allows(statements, Request(a, queue_arn)) for a in POLLER)
            ok &= all(self.no_queue_deny(queue_id, Request(a, queue_arn)) for a in POLLER)
            yield Edge(f"queue {self.t.name(queue_id)} -> {function_id}", ok)

    def function_logs(self) -> Iterator[Edge]:
        for function_id, props in self.t.of_type("AWS::Lambda::Function").items():
            group = props["LoggingConfig"]["LogGroup"]
            group_arn = self.t.attr(group["Ref"], "Arn").removesuffix(":*")
            role_id = props["Role"]["Fn::GetAtt"][0]
            statements = self.t.role_statements(role_id)
            stream = f"{group_arn}:log-stream:2025/01/01/[$LATEST]abc"
            ok = all(allows(statements, Request(a, stream)) for a in LOG_WRITES)
            yield Edge(f"{function_id} -> its log group", ok)

    def api_gateway_logs(self) -> Iterator[Edge]:
        for stage in self.t.of_type("AWS::ApiGateway::Stage").values():
            if "AccessLogSetting" not in stage:
                continue
            accounts = list(self.t.of_type("AWS::ApiGateway::Account").values())
            if not accounts:
                # api.cloudwatch_role: existing; `crm-to-books preflight` checks the account.
                continue
            (account,) = accounts
            role_arn = self.t.resolve(account["CloudWatchRoleArn"])
            group = self.t.resolve(stage["AccessLogSetting"]["DestinationArn"])
            stream = f"{group}:log-stream:abc"
            ok = self.role_may(role_arn, "apigateway.amazonaws.com", LOG_WRITES, stream)
            yield Edge("API Gateway (account role) -> the stage's access log group", ok)


def _allow_all() -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}


@pytest.mark.parametrize("env", ENVS, ids=lambda e: e.partition)
def test_every_delivery_edge_is_allowed_by_its_receiver(synth, env) -> None:
    edges = list(Walk(synth.template, env).edges())
    refused = [e.what for e in edges if not e.ok]
    assert not refused, "deliveries the receiver refuses:\n" + "\n".join(refused)
    unscoped = [e.what for e in edges if not e.foreign_refused]
    assert not unscoped, "deliveries a foreign source could also make:\n" + "\n".join(unscoped)


def test_the_walk_finds_every_kind_of_edge_the_stack_has(synth) -> None:
    edges = [e.what for e in Walk(synth.template, Env()).edges()]
    for kind in (
        "alarm ",
        "rule ",
        "(DLQ)",
        "schedule ",
        "API ",
        "queue ",
        "log group",
        "API Gateway",
    ):
        assert any(kind in e for e in edges), kind
