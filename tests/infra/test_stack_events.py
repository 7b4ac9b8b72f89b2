"""Bus rules route each kind to its queue; schedules invoke the right targets with a role."""

from __future__ import annotations

import json

import pytest

from crm_to_books import topology


@pytest.mark.parametrize("spec", topology.IMPORT_FUNCTIONS, ids=lambda s: s.kind or s.name)
def test_import_requested_events_of_a_kind_reach_its_queue(synth, spec):
    (bus_id,) = synth.of_type("AWS::Events::EventBus")
    queue = synth.queue(synth.names.queue(spec.kind))
    dlq = synth.queue(synth.names.dlq(spec.kind))
    (rule_id, rule), *others = [
        (lid, p)
        for lid, p in synth.of_type("AWS::Events::Rule").items()
        if p["EventPattern"].get("detail", {}).get("kind") == [spec.kind]
    ]
    assert not others
    assert rule["EventBusName"] == {"Ref": bus_id}
    assert rule["EventPattern"] == topology.import_requested_pattern(spec.kind)
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [queue, "Arn"]}
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [dlq, "Arn"]}}
    # The queue lets exactly that rule send to it.
    (allowed,) = [
        s
        for p in synth.of_type("AWS::SQS::QueuePolicy").values()
        if {"Ref": queue} in p["Queues"]
        for s in p["PolicyDocument"]["Statement"]
        if s["Effect"] == "Allow"
    ]
    assert allowed["Principal"] == {"Service": "events.amazonaws.com"}
    assert allowed["Condition"] == {
        "ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [rule_id, "Arn"]}}
    }
    assert "sqs:SendMessage" in synth.as_list(allowed["Action"])
    assert not {"sqs:ReceiveMessage", "sqs:DeleteMessage"} & set(synth.as_list(allowed["Action"]))


@pytest.mark.parametrize(
    ("spec", "minutes"),
    [(topology.TOKEN_KEEPER, topology.TOKEN_KEEPER_RATE_MINUTES),
     (topology.REDRIVE, topology.REDRIVE_RATE_MINUTES)],
    ids=["token-keeper", "redrive"],
)  # fmt: skip
def test_maintenance_job_is_scheduled_with_a_role_that_invokes_only_it(synth, spec, minutes):
    function_id, _ = synth.function(spec)
    (schedule,) = [
        p
        for p in synth.of_type("AWS::Scheduler::Schedule").values()
        if p["Target"]["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}
    ]
    assert schedule["ScheduleExpression"] == f"rate({minutes} minutes)"
    assert schedule["State"] == "ENABLED"
    role_id = schedule["Target"]["RoleArn"]["Fn::GetAtt"][0]
    trust = synth.resources[role_id]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "scheduler.amazonaws.com"}]
    statements = synth.role_statements(role_id)
    assert {a for s in statements for a in synth.as_list(s["Action"])} == {"lambda:InvokeFunction"}
    for statement in statements:
        for resource in synth.as_list(statement["Resource"]):
            assert function_id in json.dumps(resource)


def test_declared_schedule_sends_its_fixed_request_to_the_kind_queue(synth):
    queue = synth.queue(synth.names.queue("item"))
    (schedule,) = [
        p
        for p in synth.of_type("AWS::Scheduler::Schedule").values()
        if p["Target"]["Arn"] == {"Fn::GetAtt": [queue, "Arn"]}
    ]
    assert schedule["ScheduleExpression"] == "cron(0 2 * * ? *)"
    assert json.loads(schedule["Target"]["Input"]) == {
        "organization_id": "10234695",
        "crm_id": "4000000000123",
    }
    dlq = synth.queue(synth.names.dlq("item"))
    assert schedule["Target"]["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [dlq, "Arn"]}}
    statements = synth.role_statements(schedule["Target"]["RoleArn"]["Fn::GetAtt"][0])
    assert "sqs:SendMessage" in synth.actions_on(statements, queue)
