"""Each kind's queue: DLQ, encryption, TLS-only policy, visibility, event source."""

from __future__ import annotations

import pytest

from crm_to_books import topology
from infra.config import parse_config
from tests.infra.conftest import CONFIG

KINDS = pytest.mark.parametrize("spec", topology.IMPORT_FUNCTIONS, ids=lambda s: s.kind or s.name)


def _policy_statements(synth, queue_id):
    return [
        statement
        for props in synth.of_type("AWS::SQS::QueuePolicy").values()
        if {"Ref": queue_id} in props["Queues"]
        for statement in props["PolicyDocument"]["Statement"]
    ]


@KINDS
def test_queue_has_a_dlq_and_outlives_six_function_timeouts(synth, spec):
    queues = synth.of_type("AWS::SQS::Queue")
    queue = queues[synth.queue(synth.names.queue(spec.kind))]
    dlq_id = synth.queue(synth.names.dlq(spec.kind))
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]},
        "maxReceiveCount": topology.MAX_RECEIVE_COUNT,
    }
    assert queue["VisibilityTimeout"] >= 6 * spec.timeout_seconds
    assert queues[dlq_id]["MessageRetentionPeriod"] == topology.DLQ_RETENTION_DAYS * 86400


@pytest.mark.parametrize("which", ["queue", "dlq"])
@KINDS
def test_queue_is_encrypted_and_refuses_plain_http(synth, spec, which):
    queue_id = synth.queue(getattr(synth.names, which)(spec.kind))
    props = synth.of_type("AWS::SQS::Queue")[queue_id]
    assert props.get("SqsManagedSseEnabled") or props.get("KmsMasterKeyId")
    assert {
        "Action": "sqs:*",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        "Effect": "Deny",
        "Principal": {"AWS": "*"},
        "Resource": {"Fn::GetAtt": [queue_id, "Arn"]},
    } in _policy_statements(synth, queue_id)


@KINDS
def test_event_source_reports_partial_failures_with_bounded_concurrency(synth, spec):
    function_id, _ = synth.function(spec)
    queue_id = synth.queue(synth.names.queue(spec.kind))
    (mapping,) = [
        p
        for p in synth.of_type("AWS::Lambda::EventSourceMapping").values()
        if p["FunctionName"] == {"Ref": function_id}
    ]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": [queue_id, "Arn"]}
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] == topology.BATCH_SIZE
    assert mapping["MaximumBatchingWindowInSeconds"] == topology.MAX_BATCHING_WINDOW_SECONDS
    # From the configuration: the four kinds' pollers must fit the account's concurrency.
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": CONFIG["queue_concurrency"]}


def test_the_default_queue_concurrency_fits_a_new_accounts_lambda_concurrency():
    # A new AWS account starts with 10 concurrent executions; AWS's minimum per source is 2.
    config = parse_config({k: v for k, v in CONFIG.items() if k != "queue_concurrency"}, "t")
    assert config.queue_concurrency == topology.QUEUE_CONCURRENCY_MINIMUM == 2
    assert config.queue_concurrency * len(topology.IMPORT_FUNCTIONS) <= 10
