"""The alarm topic, the alarms (each one has an entry in docs/operations.md) and the dashboard."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from crm_to_books import topology

RUNBOOK = "docs/operations.md"
FIVE_MINUTES = Duration.minutes(5)
HOOK_REFUSED_BURST = 20  # refused notifications in five minutes


def service_metric(name: str, statistic: str = "Sum") -> cloudwatch.Metric:
    """A metric the functions emit (Powertools EMF) under the service's namespace."""
    return cloudwatch.Metric(
        namespace=topology.METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map={"service": topology.SERVICE_NAME},
        statistic=statistic,
        period=FIVE_MINUTES,
    )


class Observability(Construct):
    def __init__(self, scope: Construct, id: str, *, prefix: str, alarm_email: str | None) -> None:
        super().__init__(scope, id)
        self.prefix = prefix
        # CloudWatch cannot publish to a topic under the AWS-managed SNS key: a CMK it may use.
        key = kms.Key(
            self,
            "AlarmTopicKey",
            description=f"{prefix} alarm topic",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.topic = sns.Topic(
            self, "AlarmTopic", display_name=f"{prefix} alarms", master_key=key, enforce_ssl=True
        )
        # enforce_ssl gives the topic a policy whose only statement is a Deny, in place of SNS's
        # default policy: nothing may publish unless allowed here. CloudWatch may, for this
        # stack's alarms only (every alarm name starts with the prefix).
        stack = Stack.of(self)
        alarms = stack.format_arn(
            service="cloudwatch",
            resource="alarm",
            resource_name=f"{prefix}-*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        conditions = {
            "StringEquals": {"aws:SourceAccount": stack.account},
            "ArnLike": {"aws:SourceArn": alarms},
        }
        self.topic.add_to_resource_policy(
            _cloudwatch_may(["sns:Publish"], [self.topic.topic_arn], conditions)
        )
        key.add_to_resource_policy(
            _cloudwatch_may(["kms:Decrypt", "kms:GenerateDataKey*"], ["*"], conditions)
        )
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        self._action = actions.SnsAction(self.topic)
        self.alarm(
            "ZohoThrottled",
            service_metric(topology.METRIC_ZOHO_THROTTLED),
            summary="Zoho answered 429: an organization's limits are lower than configured",
            anchor="zoho-throttled",
        )
        self.alarm(
            "TokenRefreshFailed",
            service_metric(topology.METRIC_TOKEN_REFRESH_FAILED),
            summary="Zoho refused a refresh token: imports on that connection are parked",
            anchor="token-refresh-failed",
        )

    def alarm(
        self,
        id: str,
        metric: cloudwatch.IMetric,
        *,
        summary: str,
        anchor: str,
        threshold: float = 1,
        name: str | None = None,
    ) -> cloudwatch.Alarm:
        """An alarm at `metric >= threshold` over one period, notifying the topic."""
        alarm = cloudwatch.Alarm(
            self,
            id,
            alarm_name=f"{self.prefix}-{name or anchor}",
            alarm_description=f"{summary}. Runbook: {RUNBOOK}#{anchor}",
            metric=metric,
            threshold=threshold,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(self._action)
        return alarm

    def watch_crm(self) -> list[cloudwatch.Alarm]:
        """CRM sweeps, notification channels and the public hook route."""
        return [
            self.alarm(
                "CrmSweepFailed",
                service_metric(topology.METRIC_SWEEP_FAILED),
                summary="A CRM sweep stopped on a problem (CRM refused or unavailable, a scope "
                "missing, imports not queued)",
                anchor="crm-sweep-failed",
            ),
            self.alarm(
                "CrmChannelsLapsed",
                service_metric(topology.METRIC_CHANNELS_LAPSED),
                summary="A Zoho CRM notification channel had lapsed: enabled again, its gap swept",
                anchor="crm-channel-lapsed",
            ),
            self.alarm(
                "CrmChannelRenewFailed",
                service_metric(topology.METRIC_CHANNEL_RENEW_FAILED),
                summary="A Zoho CRM notification channel could not be renewed",
                anchor="crm-channel-renew-failed",
            ),
            self.alarm(
                "CrmHookRefused",
                service_metric(topology.METRIC_HOOK_REFUSED),
                summary="Many CRM notifications were refused (bad token, unknown channel, "
                "malformed): a misconfigured channel or someone probing the public route",
                anchor="crm-hook-refused",
                threshold=HOOK_REFUSED_BURST,
            ),
        ]

    def watch_dlq(self, kind: str, dlq: sqs.IQueue) -> cloudwatch.Alarm:
        return self.alarm(
            f"{kind}DlqNotEmpty",
            dlq.metric_approximate_number_of_messages_visible(
                statistic="Maximum", period=Duration.minutes(1)
            ),
            summary=f"{kind} imports exhausted their retries and wait in the DLQ",
            anchor="dlq-not-empty",
            name=f"{kind}-dlq-not-empty",
        )

    def watch_function(self, function: lambda_.IFunction, logical_name: str) -> cloudwatch.Alarm:
        return self.alarm(
            f"{logical_name}Errors",
            function.metric_errors(period=FIVE_MINUTES, statistic="Sum"),
            summary=f"{logical_name} raised unhandled errors",
            anchor="function-errors",
            name=f"{logical_name}-errors",
        )

    def watch_api(self, api: apigateway.RestApi) -> cloudwatch.Alarm:
        return self.alarm(
            "Api5xx",
            api.metric_server_error(period=FIVE_MINUTES, statistic="Sum"),
            summary="The API answered 5xx",
            anchor="api-5xx",
            threshold=5,
        )

    def dashboard(
        self,
        *,
        queues: Mapping[str, tuple[sqs.IQueue, sqs.IQueue]],
        functions: Mapping[str, lambda_.IFunction],
        api: apigateway.RestApi,
    ) -> cloudwatch.Dashboard:
        imports = [
            service_metric(topology.METRIC_IMPORT_SUCCEEDED),
            service_metric(topology.METRIC_IMPORT_FAILED),
        ]
        by_kind = [
            cloudwatch.Metric(
                namespace=topology.METRICS_NAMESPACE,
                metric_name=topology.METRIC_IMPORTS,
                dimensions_map={"service": topology.SERVICE_NAME, "kind": kind, "outcome": outcome},
                statistic="Sum",
                period=FIVE_MINUTES,
                label=f"{kind} {outcome}",
            )
            for kind in queues
            for outcome in ("succeeded", "failed")
        ]
        latency = [
            service_metric(topology.METRIC_ZOHO_LATENCY, statistic=stat)
            for stat in ("p50", "p90", "Maximum")
        ]
        zoho = [
            service_metric(topology.METRIC_ZOHO_THROTTLED),
            service_metric(topology.METRIC_TOKEN_REFRESH_FAILED),
        ]
        depth = [
            queue.metric_approximate_number_of_messages_visible(label=kind, period=FIVE_MINUTES)
            for kind, (queue, _) in queues.items()
        ]
        age = [
            queue.metric_approximate_age_of_oldest_message(label=kind, period=FIVE_MINUTES)
            for kind, (queue, _) in queues.items()
        ]
        dlqs = [
            dlq.metric_approximate_number_of_messages_visible(label=kind, period=FIVE_MINUTES)
            for kind, (_, dlq) in queues.items()
        ]
        board = cloudwatch.Dashboard(self, "Dashboard", dashboard_name=self.prefix)
        board.add_widgets(
            _graph("Imports by outcome", imports),
            _graph("Zoho latency (ms)", latency),
            _graph("Zoho throttling and token refresh failures", zoho),
        )
        board.add_widgets(
            _graph("Imports by kind", by_kind),
            _graph("Token refreshes", [service_metric(topology.METRIC_TOKEN_REFRESHED)]),
        )
        board.add_widgets(
            _graph("Queue depth", depth),
            _graph("Oldest message age (s)", age),
            _graph("Dead-letter queues", dlqs),
        )
        errors = [f.metric_errors(label=n, period=FIVE_MINUTES) for n, f in functions.items()]
        throttles = [f.metric_throttles(label=n, period=FIVE_MINUTES) for n, f in functions.items()]
        board.add_widgets(
            _graph("Function errors", errors),
            _graph("Function throttles", throttles),
            _graph(
                "API",
                [
                    api.metric_client_error(period=FIVE_MINUTES),
                    api.metric_server_error(period=FIVE_MINUTES),
                    api.metric_count(period=FIVE_MINUTES),
                ],
            ),
        )
        return board


def _cloudwatch_may(
    actions: list[str], resources: list[str], conditions: dict[str, dict[str, str]]
) -> iam.PolicyStatement:
    return iam.PolicyStatement(
        sid="CloudWatchAlarmsPublish",
        principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
        actions=actions,
        resources=resources,
        conditions=conditions,
    )


def _graph(title: str, metrics: Sequence[cloudwatch.IMetric]) -> cloudwatch.GraphWidget:
    return cloudwatch.GraphWidget(title=title, left=list(metrics), width=8)
