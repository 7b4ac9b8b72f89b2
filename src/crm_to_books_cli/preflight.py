"""The checks behind `crm-to-books preflight`: the account and region as CloudFormation will meet
the stack's template, and, once deployed, whether the service can work. Read-only.

Each check reads the template (synthesized or deployed) for what it needs: the bootstrap
parameter, the resources with fixed names, the queues' MaximumConcurrency, whether the stack
sets the account's API Gateway log role, the connection secrets. Each finding says what to do.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from crm_to_books import dynamo, topology
from crm_to_books.sweep import PROBLEMS as SWEEP_PROBLEMS
from crm_to_books.tokens import _key as token_key
from crm_to_books_cli.output import CONNECT_FLAGS
from crm_to_books_cli.target import BAD_CREDENTIALS, Target

OK, WARNING, BLOCKING = "ok", "warning", "blocking"
KEPT = {"Retain", "RetainExceptOnCreate"}  # what CloudFormation can adopt again
NAMED = {  # stateful types with a fixed name: what an earlier stack may have left behind
    "AWS::DynamoDB::Table": ("TableName", "table"),
    "AWS::SecretsManager::Secret": ("Name", "secret"),
    "AWS::SQS::Queue": ("QueueName", "queue"),
    "AWS::Logs::LogGroup": ("LogGroupName", "log group"),
}
UNSETTLED = {"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "CREATE_FAILED", "DELETE_FAILED"}
CONCURRENCY_QUOTA = "Service Quotas > AWS Lambda > Concurrent executions (L-B99A9384)"
KEEPER_WINDOW = timedelta(minutes=3 * topology.TOKEN_KEEPER_RATE_MINUTES)
IMPORT_EXISTING = "npx aws-cdk deploy --import-existing-resources"


@dataclass(frozen=True, slots=True)
class Finding:
    check: str
    status: str  # ok | warning | blocking
    message: str
    action: str = ""  # what to do; empty when there is nothing to do

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Stack:
    """The deployed stack, if there is one."""

    name: str
    status: str | None  # None: no such stack
    outputs: Mapping[str, str]

    @property
    def deployed(self) -> bool:
        return (
            self.status is not None
            and self.status.endswith("_COMPLETE")
            and self.status not in UNSETTLED
        )


class Template:
    """What the checks need from a synthesized (or deployed) template."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.resources: Mapping[str, Mapping[str, Any]] = body.get("Resources", {})
        self.body = body

    def of_type(self, type_: str) -> dict[str, Mapping[str, Any]]:
        return {
            lid: r.get("Properties", {}) for lid, r in self.resources.items() if r["Type"] == type_
        }

    def bootstrap(self) -> tuple[str, int] | None:
        """The SSM parameter holding the bootstrap version, and the lowest version accepted."""
        parameter = self.body.get("Parameters", {}).get("BootstrapVersion", {}).get("Default")
        if not parameter:
            return None
        refused = [
            int(v)
            for rule in self.body.get("Rules", {}).values()
            for assertion in rule.get("Assertions", [])
            for v in _refused_versions(assertion)
        ]
        return parameter, max(refused, default=0) + 1

    def named(self) -> Iterator[tuple[str, str, str, bool]]:
        """(type, what, name, kept) for every stateful resource with a fixed name."""
        for resource in self.resources.values():
            if resource["Type"] not in NAMED:
                continue
            prop, what = NAMED[resource["Type"]]
            name = resource.get("Properties", {}).get(prop)
            if isinstance(name, str):
                yield resource["Type"], what, name, resource.get("DeletionPolicy") in KEPT

    def queue_concurrency(self) -> int:
        return sum(
            int(p.get("ScalingConfig", {}).get("MaximumConcurrency", 0))
            for p in self.of_type("AWS::Lambda::EventSourceMapping").values()
        )

    def secrets(self) -> dict[str, tuple[str, ...]]:
        """Each connection secret's name and the keys its template holds (placeholders)."""
        found = {}
        for props in self.of_type("AWS::SecretsManager::Secret").values():
            generated = props.get("GenerateSecretString", {})
            keys = json.loads(generated.get("SecretStringTemplate", "{}"))
            found[str(props["Name"])] = tuple(keys)
        return found

    def sets_account_log_role(self) -> str | None:
        """The logical id of the role the stack makes the account's API Gateway log role."""
        for props in self.of_type("AWS::ApiGateway::Account").values():
            return str(props["CloudWatchRoleArn"]["Fn::GetAtt"][0])
        return None

    def function_environment(self, name: str) -> dict[str, str] | None:
        """A function's environment variables (the literal ones), or None without it."""
        for props in self.of_type("AWS::Lambda::Function").values():
            if props.get("FunctionName") == name:
                variables = props.get("Environment", {}).get("Variables", {})
                return {k: v for k, v in variables.items() if isinstance(v, str)}
        return None

    def logs_api_access(self) -> bool:
        return any("AccessLogSetting" in p for p in self.of_type("AWS::ApiGateway::Stage").values())


def _refused_versions(assertion: Mapping[str, Any]) -> list[str]:
    """CDK's CheckBootstrapVersion: Fn::Not [Fn::Contains [[refused...], Ref BootstrapVersion]]."""
    try:
        (contains,) = assertion["Assert"]["Fn::Not"]
        return [str(v) for v in contains["Fn::Contains"][0]]
    except (KeyError, TypeError, ValueError):
        return []


class Preflight:
    def __init__(
        self,
        where: Target,
        template: Template,
        stack: Stack,
        *,
        account: str,
        importing: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.where = where
        self.template = template
        self.stack = stack
        self.account = account
        self.importing = importing
        self.clock = clock

    def findings(self) -> list[Finding]:
        checks: list[tuple[str, Callable[[], Iterator[Finding]]]] = [
            ("stack", self.stack_state),
            ("bootstrap", self.bootstrap),
            ("api-log-role", self.account_log_role),
            ("concurrency", self.concurrency),
        ]
        if self.stack.status is None:
            checks.append(("leftover", self.leftovers))
        if self.stack.deployed:
            checks += [
                ("connection", self.connections),
                ("token-keeper", self.token_keeper),
                ("crm", self.crm_triggers),
                ("alarm-topic", self.alarm_subscriptions),
            ]
        found: list[Finding] = []
        for name, check in checks:
            try:
                found += list(check())
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in BAD_CREDENTIALS:
                    raise
                found.append(_unchecked(name, exc))
            except BotoCoreError as exc:
                found.append(_unchecked(name, exc))
        return found

    # --- before a deploy ----------------------------------------------------------------------
    def stack_state(self) -> Iterator[Finding]:
        status, name = self.stack.status, self.stack.name
        if status is None:
            yield Finding("stack", OK, f"no stack {name} yet: the deploy creates it")
        elif status == "ROLLBACK_COMPLETE":
            yield Finding(
                "stack",
                BLOCKING,
                f"stack {name} failed its creation and rolled back (ROLLBACK_COMPLETE): "
                "CloudFormation cannot update it",
                f"aws cloudformation delete-stack --stack-name {name}, then deploy again",
            )
        elif status.endswith("_IN_PROGRESS"):
            yield Finding("stack", BLOCKING, f"stack {name} is {status}", "wait for it to end")
        elif status == "UPDATE_ROLLBACK_FAILED":
            yield Finding(
                "stack",
                BLOCKING,
                f"stack {name} is UPDATE_ROLLBACK_FAILED",
                f"aws cloudformation continue-update-rollback --stack-name {name}",
            )
        elif status in UNSETTLED:
            yield Finding(
                "stack",
                BLOCKING,
                f"stack {name} is {status}",
                "see its events in the CloudFormation console; delete it and deploy again",
            )
        else:
            yield Finding("stack", OK, f"stack {name} is {status}")

    def bootstrap(self) -> Iterator[Finding]:
        wanted = self.template.bootstrap()
        if wanted is None:
            yield Finding("bootstrap", OK, "the template needs no CDK bootstrap version")
            return
        parameter, minimum = wanted
        command = f"npx aws-cdk bootstrap aws://{self.account}/{self.where.region}"
        ssm = self.where.client("ssm")
        try:
            version = int(ssm.get_parameter(Name=parameter)["Parameter"]["Value"])
        except ssm.exceptions.ParameterNotFound:
            yield Finding(
                "bootstrap",
                BLOCKING,
                f"this account and region are not bootstrapped for the CDK ({parameter} is "
                "missing)",
                command,
            )
            return
        if version < minimum:
            yield Finding(
                "bootstrap",
                BLOCKING,
                f"CDK bootstrap version {version}; the template needs {minimum} or later",
                f"{command} (with a recent CDK CLI)",
            )
        else:
            yield Finding("bootstrap", OK, f"CDK bootstrap version {version} (needs {minimum}+)")

    def account_log_role(self) -> Iterator[Finding]:
        if not self.template.logs_api_access():
            return
        current = self.where.client("apigateway").get_account().get("cloudwatchRoleArn")
        ours = self.template.sets_account_log_role()
        if ours is not None:
            yield self._replacing(current, ours)
            return
        configure = "set api.cloudwatch_role to create (the default) and deploy"
        if not current:
            yield Finding(
                "api-log-role",
                BLOCKING,
                "the API's access logs need the account's API Gateway CloudWatch Logs role, and "
                "the account has none (api.cloudwatch_role: existing)",
                f"{configure}; or: aws apigateway update-account --patch-operations "
                "op=replace,path=/cloudwatchRoleArn,value=ROLE_ARN",
            )
            return
        iam = self.where.client("iam")
        role_name = current.rsplit("/", 1)[-1]
        try:
            role = iam.get_role(RoleName=role_name)["Role"]
        except iam.exceptions.NoSuchEntityException:
            yield Finding(
                "api-log-role",
                BLOCKING,
                f"the account's API Gateway CloudWatch Logs role {current} does not exist",
                f"{configure}, or point the account at a role that exists",
            )
            return
        if "apigateway.amazonaws.com" not in json.dumps(role.get("AssumeRolePolicyDocument", {})):
            yield Finding(
                "api-log-role",
                BLOCKING,
                f"the account's API Gateway log role {current} does not trust "
                "apigateway.amazonaws.com",
                f"{configure}, or fix that role's trust policy",
            )
            return
        yield Finding("api-log-role", OK, f"the account's API Gateway log role is {current}")

    def _replacing(self, current: str | None, role_id: str) -> Finding:
        if not current:
            return Finding("api-log-role", OK, "the deploy sets the account's API Gateway log role")
        mine = None
        if self.stack.status is not None:
            cloudformation = self.where.client("cloudformation")
            try:
                mine = cloudformation.describe_stack_resource(
                    StackName=self.stack.name, LogicalResourceId=role_id
                )["StackResourceDetail"].get("PhysicalResourceId")
            except ClientError:
                mine = None
        if mine and current.endswith(f"/{mine}"):
            return Finding("api-log-role", OK, "the account's API Gateway log role is the stack's")
        return Finding(
            "api-log-role",
            WARNING,
            f"the account's API Gateway log role is {current}; the deploy replaces it with the "
            "stack's own (every API in this region then logs with it)",
            "nothing, if that is fine; to leave the account's role alone, set "
            "api.cloudwatch_role: existing",
        )

    def concurrency(self) -> Iterator[Finding]:
        pollers = self.template.queue_concurrency()
        functions = len(self.template.of_type("AWS::Lambda::Function"))
        limits = self.where.client("lambda").get_account_settings()["AccountLimit"]
        total = int(limits["ConcurrentExecutions"])
        free = int(limits.get("UnreservedConcurrentExecutions", total))
        comfortable = pollers + functions
        said = (
            f"{free} unreserved concurrent executions (account limit {total}); the queues' "
            f"pollers may use {pollers}"
        )
        if free < pollers:
            yield Finding(
                "concurrency",
                BLOCKING,
                f"{said}: throttled pollers put messages back and use up their receives, "
                "sending imports to the DLQs",
                f"lower queue_concurrency (2 at least), or raise {CONCURRENCY_QUOTA} to "
                f"{comfortable} or more",
            )
        elif free < comfortable:
            yield Finding(
                "concurrency",
                WARNING,
                f"{said}, leaving {free - pollers} for HTTP calls and the scheduled jobs of "
                f"{functions} functions: they may be throttled while the queues are busy",
                f"raise {CONCURRENCY_QUOTA} to {comfortable} or more (new accounts start at 10)",
            )
        else:
            yield Finding("concurrency", OK, f"{said} and each function one more")

    def leftovers(self) -> Iterator[Finding]:
        found = False
        for type_, what, name, kept in self.template.named():
            state = self._existing(type_, name)
            if state is None:
                continue
            found = True
            if state == "deleted":
                yield Finding(
                    "leftover",
                    BLOCKING,
                    f"secret {name} is scheduled for deletion: its name is taken until then",
                    f"aws secretsmanager restore-secret --secret-id {name} (keeps the "
                    "connection; then deploy with --import-existing-resources), or "
                    f"aws secretsmanager delete-secret --secret-id {name} "
                    "--force-delete-without-recovery",
                )
            elif kept and self.importing:
                yield Finding(
                    "leftover", OK, f"{what} {name} exists and the deploy adopts it, as it is"
                )
            else:
                yield Finding(
                    "leftover",
                    BLOCKING,
                    f"{what} {name} exists, left by an earlier stack: a plain deploy fails "
                    "with 'already exists'",
                    f"keep it: {IMPORT_EXISTING} (then run preflight with --import-existing); "
                    f"or delete it if it should start empty"
                    if kept
                    else f"delete it: this stack cannot adopt a {what} it does not keep",
                )
        if not found:
            yield Finding("leftover", OK, "no resource with the stack's names exists yet")

    def _existing(self, type_: str, name: str) -> str | None:
        """None (absent), "deleted" (a secret in its recovery window) or "exists"."""
        client = self.where.client(
            {
                "AWS::DynamoDB::Table": "dynamodb",
                "AWS::SecretsManager::Secret": "secretsmanager",
                "AWS::SQS::Queue": "sqs",
                "AWS::Logs::LogGroup": "logs",
            }[type_]
        )
        try:
            if type_ == "AWS::DynamoDB::Table":
                client.describe_table(TableName=name)
            elif type_ == "AWS::SecretsManager::Secret":
                described = client.describe_secret(SecretId=name)
                return "deleted" if described.get("DeletedDate") else "exists"
            elif type_ == "AWS::SQS::Queue":
                client.get_queue_url(QueueName=name)
            else:
                groups = client.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
                return "exists" if any(g["logGroupName"] == name for g in groups) else None
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _ABSENT:
                return None
            raise
        return "exists"

    # --- after a deploy -----------------------------------------------------------------------
    def connections(self) -> Iterator[Finding]:
        secrets = self.where.client("secretsmanager")
        for secret_id, keys in sorted(self.template.secrets().items()):
            connection = self._connection(secret_id)
            value = secrets.get_secret_value(SecretId=secret_id).get("SecretString") or "{}"
            try:
                stored = json.loads(value)
            except ValueError:
                stored = {}
            # Only key names are ever shown: never a value.
            empty = [k for k in keys if not stored.get(k)]
            if empty:
                yield Finding(
                    "connection",
                    BLOCKING,
                    f"connection {connection} is not connected: its secret {secret_id} has no "
                    f"{', '.join(empty)}",
                    f"{self._connect(connection)} (docs/deploy.md)",
                )
            else:
                yield Finding("connection", OK, f"connection {connection}: its secret is set")

    def token_keeper(self) -> Iterator[Finding]:
        names = self.where.names
        keeper = names.function(topology.TOKEN_KEEPER)
        yield from self._keeper_runs(keeper)
        dynamodb = self.where.client("dynamodb")
        now = self.clock()
        for secret_id in sorted(self.template.secrets()):
            connection = self._connection(secret_id)
            answer = dynamodb.get_item(
                TableName=names.state_table, Key=token_key(connection), ConsistentRead=True
            )
            item = dynamo.load(answer.get("Item")) or {}  # read as the token keeper reads it
            reconnect = self._connect(connection)
            expires = float(item.get("expires_at") or 0)
            throttled = float(item.get("throttled_until") or 0)
            if item.get("broken"):
                reason = item.get("broken_reason") or "refused"
                yield Finding(
                    "token-keeper",
                    BLOCKING,
                    f"Zoho refused connection {connection}'s refresh token ({reason}): its "
                    "imports are parked",
                    reconnect,
                )
            elif throttled > now:
                yield Finding(
                    "token-keeper",
                    WARNING,
                    f"Zoho's token limit blocks connection {connection} for "
                    f"{int(throttled - now)} s more",
                    "nothing: the token keeper resumes after it (never refresh in a loop)",
                )
            elif not expires:
                yield Finding(
                    "token-keeper",
                    WARNING,
                    f"connection {connection} has no access token yet",
                    f"connect it if it is not ({reconnect}); else the token keeper fetches one "
                    f"within {topology.TOKEN_KEEPER_RATE_MINUTES} minutes",
                )
            elif expires < now:
                yield Finding(
                    "token-keeper",
                    WARNING,
                    f"connection {connection}'s access token expired {int(now - expires)} s "
                    "ago: the token keeper is not renewing it",
                    f"aws logs tail /aws/lambda/{keeper} --since 1h",
                )
            else:
                yield Finding(
                    "token-keeper",
                    OK,
                    f"connection {connection}: access token valid for {int(expires - now)} s",
                )

    def crm_triggers(self) -> Iterator[Finding]:
        """CRM sweeps and notification channels (docs/crm-triggers.md): the CRM scopes the
        token keeper found missing, channels that lapsed, syncs whose last run failed."""
        names = self.where.names
        environment = self.template.function_environment(names.function(topology.SWEEP))
        if environment is None:
            return
        organizations = json.loads(environment.get("ORGANIZATIONS") or "{}")
        syncs = json.loads(environment.get("SYNCS") or "[]")
        dynamodb = self.where.client("dynamodb")
        now = self.clock()

        def item(key: str) -> dict[str, Any]:
            answer = dynamodb.get_item(
                TableName=names.state_table, Key={"pk": {"S": key}}, ConsistentRead=True
            )
            return dynamo.load(answer.get("Item")) or {}

        for connection in sorted({o.get("connection", "default") for o in organizations.values()}):
            missing = sorted(
                scope
                for scope in (item(f"token#{connection}").get("missing_scopes") or {})
                if scope.lower().startswith("zohocrm.")
            )
            if missing:
                yield Finding(
                    "crm",
                    WARNING,
                    f"connection {connection} lacks {', '.join(missing)}: its CRM sweeps and "
                    "notification channels stop (Books imports go on)",
                    f"{self._connect(connection)} with a grant code that has the CRM scopes",
                )
        for organization_id in sorted(organizations):
            channel = item(f"channel#{organization_id}")
            if channel.get("status") != "active":
                continue
            left = float(channel.get("expires_at") or 0) - now
            if left <= 0:
                yield Finding(
                    "crm",
                    WARNING,
                    f"organization {organization_id}'s CRM notification channel lapsed "
                    f"{int(-left)} s ago",
                    "nothing if it is minutes: the renewal job re-enables it and sweeps the gap; "
                    "else see docs/operations.md#crm-channel-renew-failed",
                )
            else:
                yield Finding(
                    "crm",
                    OK,
                    f"organization {organization_id}'s CRM notification channel is live for "
                    f"{int(left)} s more",
                )
        for sync in syncs:
            org, kind = sync.get("organization_id"), sync.get("kind")
            last = item(f"sweep#{org}#{kind}").get("last_run") or {}
            if not last:
                yield Finding("crm", OK, f"sync {kind} of {org}: no run yet")
            elif last.get("stopped") in SWEEP_PROBLEMS:
                yield Finding(
                    "crm",
                    WARNING,
                    f"sync {kind} of {org}: its last run stopped ({last.get('stopped')}): "
                    f"{last.get('message')}",
                    f"crm-to-books sync {kind} --org {org} --stack {self.stack.name}; see "
                    "docs/operations.md#crm-sweep-failed",
                )
            else:
                yield Finding(
                    "crm",
                    OK,
                    f"sync {kind} of {org}: changes before {last.get('checkpoint')} are queued",
                )

    def _keeper_runs(self, keeper: str) -> Iterator[Finding]:
        # To the next minute: a datapoint stamped this very second still counts.
        end = datetime.fromtimestamp(self.clock(), UTC) + timedelta(minutes=1)
        counts = {}
        for metric in ("Invocations", "Errors"):
            points = self.where.client("cloudwatch").get_metric_statistics(
                Namespace="AWS/Lambda",
                MetricName=metric,
                Dimensions=[{"Name": "FunctionName", "Value": keeper}],
                StartTime=end - KEEPER_WINDOW - timedelta(minutes=1),
                EndTime=end,
                Period=60,
                Statistics=["Sum"],
            )["Datapoints"]
            counts[metric] = int(sum(p["Sum"] for p in points))
        minutes = int(KEEPER_WINDOW.total_seconds() // 60)
        logs = f"aws logs tail /aws/lambda/{keeper} --since {minutes}m"
        if counts["Errors"]:
            yield Finding(
                "token-keeper",
                BLOCKING,
                f"the token keeper {keeper} failed {counts['Errors']} time(s) in {minutes} min",
                logs,
            )
        elif not counts["Invocations"]:
            yield Finding(
                "token-keeper",
                WARNING,
                f"the token keeper {keeper} has not run in {minutes} min (it runs every "
                f"{topology.TOKEN_KEEPER_RATE_MINUTES}; just deployed? check again soon)",
                "check its schedule in EventBridge Scheduler (it must be ENABLED), then " + logs,
            )
        else:
            yield Finding(
                "token-keeper",
                OK,
                f"the token keeper {keeper} ran {counts['Invocations']} time(s) in {minutes} min, "
                "without errors",
            )

    def alarm_subscriptions(self) -> Iterator[Finding]:
        topic = self.stack.outputs.get("AlarmTopicArn")
        if not topic:
            yield Finding("alarm-topic", WARNING, "the stack has no AlarmTopicArn output")
            return
        pages = self.where.client("sns").get_paginator("list_subscriptions_by_topic")
        subscriptions = [
            s for page in pages.paginate(TopicArn=topic) for s in page["Subscriptions"]
        ]
        subscribe = (
            f"aws sns subscribe --topic-arn {topic} --protocol email --notification-endpoint "
            "you@example.com (or set alarm_email in the configuration and deploy)"
        )
        if not subscriptions:
            yield Finding("alarm-topic", WARNING, "no one receives the alarms", subscribe)
            return
        for subscription in subscriptions:
            endpoint = subscription.get("Endpoint", "?")
            if subscription.get("SubscriptionArn") == "PendingConfirmation":
                yield Finding(
                    "alarm-topic",
                    BLOCKING,
                    f"{subscription.get('Protocol')} subscription {endpoint} is not confirmed: "
                    "it receives no alarm",
                    f"confirm it with the link AWS sent to {endpoint} (check spam); to send it "
                    f"again: {subscribe}",
                )
            else:
                yield Finding("alarm-topic", OK, f"{endpoint} receives the alarms")

    def _connect(self, connection: str) -> str:
        stack = self.stack.name
        return f"crm-to-books connect --stack {stack} --connection {connection} {CONNECT_FLAGS}"

    def _connection(self, secret_id: str) -> str:
        return secret_id.removeprefix(self.where.names.connection_secret(""))


_ABSENT = {
    "ResourceNotFoundException",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
}


def _unchecked(check: str, exc: Exception) -> Finding:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "?")
        operation = exc.operation_name
        if code in {"AccessDenied", "AccessDeniedException", "AuthorizationError"}:
            return Finding(
                check,
                WARNING,
                f"could not check: AWS denied {operation} ({code})",
                "give the operator preflight's permissions (docs/deploy.md#operator-permissions)",
            )
        return Finding(check, WARNING, f"could not check: {operation} answered {code}")
    return Finding(check, WARNING, f"could not check: {type(exc).__name__}: {exc}")
