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


def test_each_sync_and_the_channel_renewal_invoke_the_sweep_function_with_their_input(synth):
    function_id, props = synth.function(topology.SWEEP)
    schedules = [
        p
        for p in synth.of_type("AWS::Scheduler::Schedule").values()
        if p["Target"]["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]}
    ]
    inputs = {p["ScheduleExpression"]: json.loads(p["Target"]["Input"]) for p in schedules}
    assert inputs == {
        f"rate({topology.CHANNEL_RENEW_RATE_MINUTES} minutes)": {"action": "renew_channels"},
        "rate(15 minutes)": {"action": "sweep", "organization_id": "10234695", "kind": "account"},
    }
    for schedule in schedules:
        statements = synth.role_statements(schedule["Target"]["RoleArn"]["Fn::GetAtt"][0])
        actions = {a for s in statements for a in synth.as_list(s["Action"])}
        assert actions == {"lambda:InvokeFunction"}
        assert schedule["Target"]["RetryPolicy"]["MaximumRetryAttempts"] == 0
    # The function knows the sync (its filter and limit) and where channel tokens live.
    env = props["Environment"]["Variables"]
    [sync] = json.loads(env["SYNCS"])
    assert sync["filter"] == {"Account_Type": ["Customer", "Reseller"]}
    assert sync["max_records_per_run"] == 2000
    assert env["CHANNEL_SECRET_PREFIX"] == synth.names.channel_secret_prefix
    assert props["Timeout"] == topology.SWEEP_TIMEOUT_SECONDS
    for kind in ("account", "contact", "vendor", "item"):  # a token: each kind queue's URL
        assert synth.queue(synth.names.queue(kind)) in json.dumps(env["QUEUE_URLS"])
