"""Alarms for every DLQ, every function and the Zoho metrics, all notifying one topic."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crm_to_books import topology
from tests.infra.policy import ENVS, Request, Resolved, allows

CLOUDWATCH = "cloudwatch.amazonaws.com"

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _topic(synth):
    (topic_id,) = synth.of_type("AWS::SNS::Topic")
    return topic_id


def _alarms(synth):
    return synth.of_type("AWS::CloudWatch::Alarm").values()


def _alarm_watching(synth, **match):
    found = [a for a in _alarms(synth) if all(a.get(k) == v for k, v in match.items())]
    assert len(found) == 1, match
    return found[0]


def test_every_alarm_notifies_the_topic_and_names_its_runbook_entry(synth):
    topic = _topic(synth)
    anchors = set(re.findall(r"^## ([a-z0-9-]+)$", OPERATIONS.read_text(), re.MULTILINE))
    for alarm in _alarms(synth):
        assert alarm["AlarmActions"] == [{"Ref": topic}]
        assert alarm["TreatMissingData"] == "notBreaching"
        anchor = alarm["AlarmDescription"].rsplit("#", 1)[1]
        assert anchor in anchors, f"docs/operations.md has no entry for {anchor}"


@pytest.mark.parametrize("spec", topology.IMPORT_FUNCTIONS, ids=lambda s: s.kind or s.name)
def test_dlq_alarm_fires_on_the_first_message(synth, spec):
    dlq = synth.queue(synth.names.dlq(spec.kind))
    alarm = _alarm_watching(
        synth,
        MetricName="ApproximateNumberOfMessagesVisible",
        Dimensions=[{"Name": "QueueName", "Value": {"Fn::GetAtt": [dlq, "QueueName"]}}],
    )
    assert alarm["Threshold"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"


@pytest.mark.parametrize("spec", topology.ALL_FUNCTIONS, ids=lambda s: s.name)
def test_function_errors_alarm(synth, spec):
    function_id, _ = synth.function(spec)
    alarm = _alarm_watching(
        synth,
        MetricName="Errors",
        Namespace="AWS/Lambda",
        Dimensions=[{"Name": "FunctionName", "Value": {"Ref": function_id}}],
    )
    assert alarm["Statistic"] == "Sum"


@pytest.mark.parametrize(
    "metric", [topology.METRIC_ZOHO_THROTTLED, topology.METRIC_TOKEN_REFRESH_FAILED]
)
def test_zoho_alarms_watch_the_metrics_the_functions_emit(synth, metric):
    alarm = _alarm_watching(synth, MetricName=metric)
    assert alarm["Namespace"] == topology.METRICS_NAMESPACE == "CrmToBooks"
    assert alarm["Dimensions"] == [{"Name": "service", "Value": topology.SERVICE_NAME}]
    assert alarm["Threshold"] == 1


@pytest.mark.parametrize(
    ("metric", "threshold"),
    [
        (topology.METRIC_SWEEP_FAILED, 1),
        (topology.METRIC_CHANNELS_LAPSED, 1),
        (topology.METRIC_CHANNEL_RENEW_FAILED, 1),
        (topology.METRIC_HOOK_REFUSED, 20),  # a burst, not one stray request to a public route
    ],
)
def test_crm_alarms_watch_sweeps_channels_and_the_hook(synth, metric, threshold):
    alarm = _alarm_watching(synth, MetricName=metric)
    assert alarm["Namespace"] == topology.METRICS_NAMESPACE
    assert alarm["Dimensions"] == [{"Name": "service", "Value": topology.SERVICE_NAME}]
    assert alarm["Statistic"] == "Sum" and alarm["Threshold"] == threshold


def test_topic_is_encrypted_refuses_plain_http_and_cloudwatch_may_use_its_key(synth):
    topic_id = _topic(synth)
    topic = synth.of_type("AWS::SNS::Topic")[topic_id]
    key_id = topic["KmsMasterKeyId"]["Fn::GetAtt"][0]
    key = synth.of_type("AWS::KMS::Key")[key_id]
    assert key["EnableKeyRotation"] is True
    assert any(
        s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
        for s in key["KeyPolicy"]["Statement"]
    )
    (policy,) = synth.of_type("AWS::SNS::TopicPolicy").values()
    assert {
        "Action": "sns:Publish",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        "Effect": "Deny",
        "Principal": "*",
        "Resource": {"Ref": topic_id},
        "Sid": "AllowPublishThroughSSLOnly",
    } in policy["PolicyDocument"]["Statement"]
    (subscription,) = synth.of_type("AWS::SNS::Subscription").values()
    assert subscription["Endpoint"] == "ops@example.com"


def test_dashboard_shows_outcomes_latency_queues_and_throttles(synth):
    (dashboard,) = synth.of_type("AWS::CloudWatch::Dashboard").values()
    body = str(dashboard["DashboardBody"])
    for metric in (
        topology.METRIC_IMPORT_SUCCEEDED,
        topology.METRIC_IMPORT_FAILED,
        topology.METRIC_ZOHO_LATENCY,
        topology.METRIC_ZOHO_THROTTLED,
        "ApproximateNumberOfMessagesVisible",
        "Throttles",
    ):
        assert metric in body


@pytest.mark.parametrize("env", ENVS, ids=lambda e: e.partition)
def test_cloudwatch_may_publish_this_stacks_alarms_and_use_the_topics_key(synth, env):
    # enforce_ssl's topic policy is a Deny alone: without an Allow no alarm reaches anyone.
    resolved = Resolved(synth.template, env)
    topic_id = _topic(synth)
    topic_policy = resolved.resource_policy("AWS::SNS::TopicPolicy", "Topics", topic_id)
    key_id = synth.of_type("AWS::SNS::Topic")[topic_id]["KmsMasterKeyId"]["Fn::GetAtt"][0]
    key_policy = resolved.resolve(synth.of_type("AWS::KMS::Key")[key_id]["KeyPolicy"])["Statement"]

    def alarm(name: str, account: str = env.account) -> dict[str, str]:
        arn = f"arn:{env.partition}:cloudwatch:{env.region}:{account}:alarm:{name}"
        return {"aws:SourceArn": arn, "aws:SourceAccount": account}

    def may(context: dict[str, str]) -> bool:
        publish = Request("sns:Publish", resolved.ref(topic_id), CLOUDWATCH, context)
        key = Request("kms:GenerateDataKey", resolved.attr(key_id, "Arn"), CLOUDWATCH, context)
        return allows(topic_policy, publish) and allows(key_policy, key)

    assert may(alarm(f"{synth.names.prefix}-api-5xx"))
    assert not may(alarm(f"{synth.names.prefix}-api-5xx", account="999999999999"))
    assert not may(alarm("another-stack-api-5xx"))
