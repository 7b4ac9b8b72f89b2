"""Least privilege: each function's role allows exactly what its job needs."""

from __future__ import annotations

import json

import pytest

from crm_to_books import topology

SECRET_READ = {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}
XRAY = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def _table(synth, name):
    (lid,) = [
        lid for lid, p in synth.of_type("AWS::DynamoDB::Table").items() if p["TableName"] == name
    ]
    return lid


def _readable_secrets(synth, statements):
    return {
        name
        for lid, name in synth.secret_names().items()
        if SECRET_READ <= synth.actions_on(statements, lid)
    }


@pytest.mark.parametrize("spec", topology.ALL_FUNCTIONS, ids=lambda s: s.name)
def test_no_wildcard_actions_and_star_resources_only_for_xray(synth, spec):
    for statement in synth.function_statements(spec):
        assert statement["Effect"] == "Allow"
        actions = synth.as_list(statement["Action"])
        assert not any("*" in action for action in actions), statement
        if statement["Resource"] == "*":
            assert set(actions) <= XRAY, statement


@pytest.mark.parametrize("spec", topology.IMPORT_FUNCTIONS, ids=lambda s: s.name)
def test_import_function_role(synth, spec):
    statements = synth.function_statements(spec)
    ledger = _table(synth, synth.names.ledger_table)
    state = _table(synth, synth.names.state_table)
    assert synth.actions_on(statements, ledger) == {
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:ConditionCheckItem",
    }
    assert "dynamodb:DeleteItem" in synth.actions_on(statements, state)
    # Only the connections its organizations use: not "spare".
    assert _readable_secrets(synth, statements) == {
        synth.names.connection_secret("main"),
        synth.names.connection_secret("eu"),
    }
    (bus,) = synth.of_type("AWS::Events::EventBus")
    assert synth.actions_on(statements, bus) == {"events:PutEvents"}
    own = synth.queue(synth.names.queue(spec.kind))
    assert {"sqs:SendMessage", "sqs:ChangeMessageVisibility", "sqs:ReceiveMessage"} <= (
        synth.actions_on(statements, own)
    )
    for other in topology.IMPORT_FUNCTIONS:
        if other.kind != spec.kind:
            assert not synth.actions_on(statements, synth.queue(synth.names.queue(other.kind)))


def test_status_api_reads_the_ledger_and_nothing_else(synth):
    statements = synth.function_statements(topology.STATUS_API)
    ledger = _table(synth, synth.names.ledger_table)
    assert synth.actions_on(statements, ledger) == {
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
        "dynamodb:Query",
    }
    index = f"/index/{topology.LEDGER_STATUS_INDEX}"
    assert any(index in json.dumps(s["Resource"]) for s in statements)
    assert not _readable_secrets(synth, statements)
    assert not synth.actions_on(statements, _table(synth, synth.names.state_table))
    text = json.dumps(statements)
    assert "secretsmanager:" not in text
    assert "sqs:" not in text


def test_token_keeper_reads_every_connection_and_the_state_table(synth):
    statements = synth.function_statements(topology.TOKEN_KEEPER)
    assert _readable_secrets(synth, statements) == {
        synth.names.connection_secret(name) for name in ("main", "eu", "spare")
    }
    assert synth.actions_on(statements, _table(synth, synth.names.state_table))
    assert not synth.actions_on(statements, _table(synth, synth.names.ledger_table))
    assert "sqs:" not in json.dumps(statements)


def test_redrive_writes_the_ledger_and_sends_to_every_kind_queue(synth):
    statements = synth.function_statements(topology.REDRIVE)
    assert {"dynamodb:Query", "dynamodb:UpdateItem"} <= synth.actions_on(
        statements, _table(synth, synth.names.ledger_table)
    )
    # It reads whether a connection is still broken, and writes nothing there.
    assert synth.actions_on(statements, _table(synth, synth.names.state_table)) == {
        "dynamodb:GetItem",
        "dynamodb:BatchGetItem",
        "dynamodb:Query",
    }
    for spec in topology.IMPORT_FUNCTIONS:
        queue = synth.queue(synth.names.queue(spec.kind))
        assert "sqs:SendMessage" in synth.actions_on(statements, queue)
        assert "sqs:ReceiveMessage" not in synth.actions_on(statements, queue)
    assert not _readable_secrets(synth, statements)
    assert "secretsmanager:" not in json.dumps(statements)
