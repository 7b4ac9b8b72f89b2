"""Least privilege, derived from the code: each function's role allows every AWS call its code
makes (found by reading the library's source, `tests/support/engine_calls.py`) and nothing
more, apart from what Lambda itself needs (its log group, X-Ray, its queue's event source)."""

from __future__ import annotations

from typing import Any

import pytest

from crm_to_books import access, topology
from crm_to_books.access import Resource
from crm_to_books.topology import FunctionSpec
from tests.infra.conftest import CONFIG
from tests.infra.policy import Env, Request, Resolved, allows, granted
from tests.support import engine_calls

SPECS = pytest.mark.parametrize("spec", topology.ALL_FUNCTIONS, ids=lambda s: s.name)
ALL_CALLS = [c for calls in access.CALLS.values() for c in calls]


@pytest.fixture(scope="module")
def resolved(synth: Any) -> Resolved:
    return Resolved(synth.template, Env())


def _arns(synth: Any, resolved: Resolved, spec: FunctionSpec) -> dict[Resource, list[str]]:
    """The ARNs each resource the code names stands for, for this function."""
    names = synth.names
    tables = {p["TableName"]: lid for lid, p in synth.of_type("AWS::DynamoDB::Table").items()}
    secrets = {name: lid for lid, name in synth.secret_names().items()}
    used = {org["connection"] for org in CONFIG["organizations"].values()}
    (bus,) = synth.of_type("AWS::Events::EventBus")

    def queue(kind: str) -> str:
        return resolved.attr(synth.queue(names.queue(kind)), "Arn")

    def secret(connection: str) -> str:
        return resolved.attr(secrets[names.connection_secret(connection)], "Arn")

    kinds = [s.kind for s in topology.IMPORT_FUNCTIONS if s.kind]
    channels = resolved.resolve(
        {
            "Fn::Join": [
                "",
                [
                    "arn:",
                    {"Ref": "AWS::Partition"},
                    ":secretsmanager:",
                    {"Ref": "AWS::Region"},
                    ":",
                    {"Ref": "AWS::AccountId"},
                    f":secret:{names.channel_secret_prefix}*",
                ],
            ]
        }
    )
    return {
        Resource.LEDGER: [resolved.attr(tables[names.ledger_table], "Arn")],
        Resource.STATE: [resolved.attr(tables[names.state_table], "Arn")],
        Resource.CONNECTIONS_USED: [secret(c) for c in sorted(used)],
        Resource.CONNECTIONS_ALL: [secret(c) for c in CONFIG["connections"]],
        Resource.BUS: [resolved.attr(bus, "Arn")],
        Resource.OWN_QUEUE: [queue(spec.kind)] if spec.kind else [],
        Resource.KIND_QUEUES: [queue(kind) for kind in kinds],
        Resource.CHANNEL_SECRETS: [channels],
    }


def needed(synth: Any, resolved: Resolved, spec: FunctionSpec) -> set[tuple[str, str]]:
    """(action, ARN) for every call the function's code makes, read from the code."""
    arns = _arns(synth, resolved, spec)
    found = set()
    for calls in access.CALLS[spec.handler_dir]:
        for action in engine_calls.actions_of(calls):
            found |= {(action, arn) for arn in arns[calls.resource]}
            if action == "dynamodb:Query" and calls.resource is Resource.LEDGER:
                (table,) = arns[Resource.LEDGER]
                found.add((action, f"{table}/index/{topology.LEDGER_STATUS_INDEX}"))
    return found


def lambdas_own(synth: Any, resolved: Resolved, spec: FunctionSpec) -> set[tuple[str, str]]:
    """What Lambda itself does with the function's role (`access.for_lambda`): logs, traces,
    its queue's events."""
    function_id, props = synth.function(spec)
    sources = [
        resolved.resolve(mapping["EventSourceArn"])
        for mapping in synth.of_type("AWS::Lambda::EventSourceMapping").values()
        if mapping["FunctionName"] == {"Ref": function_id}
    ]
    arns = {
        access.LOG_GROUP: [resolved.attr(props["LoggingConfig"]["LogGroup"]["Ref"], "Arn")],
        access.ANY: ["*"],
        Resource.OWN_QUEUE: sources,
    }
    return {
        (action, arn)
        for grant in access.for_lambda(spec)
        for action in grant.actions
        for arn in arns[grant.resource]
    }


def _role(synth: Any, spec: FunctionSpec) -> str:
    _, props = synth.function(spec)
    return str(props["Role"]["Fn::GetAtt"][0])


# --- the list of calls is the code's ------------------------------------------------------------
@pytest.mark.parametrize("calls", ALL_CALLS, ids=lambda c: f"{c.code}:{c.resource.value}")
def test_the_access_list_names_exactly_the_calls_its_code_makes(calls: access.Calls) -> None:
    assert engine_calls.actions_of(calls) == set(calls.actions), calls.code


def test_every_aws_call_in_the_library_and_handlers_is_on_the_access_list() -> None:
    covered = {id(site.node) for calls in ALL_CALLS for site in engine_calls.sites_of(calls)}
    missing = [s for s in engine_calls.every_call_site() if id(s.node) not in covered]
    assert not missing, "calls no access.CALLS entry covers:\n" + "\n".join(
        f"  {s.where}: {s.action}" for s in missing
    )


def test_the_code_builds_clients_only_for_services_the_access_list_knows() -> None:
    assert engine_calls.clients_built() <= set(engine_calls.SERVICE.values())


def test_every_handler_has_an_access_list() -> None:
    assert set(access.CALLS) == set(engine_calls.handler_folders())
    assert {spec.handler_dir for spec in topology.ALL_FUNCTIONS} == set(access.CALLS)


def test_the_abandoned_attempt_and_its_permit_release_are_covered() -> None:
    # Ledger.abandon deletes a new record (alone or inside a transaction whose other item
    # releases the limiter permit): the import functions need both.
    importer = access.actions_by_resource("importer")
    assert "dynamodb:DeleteItem" in importer[Resource.LEDGER]
    assert "dynamodb:UpdateItem" in importer[Resource.STATE]


# --- the template grants them, and nothing else -------------------------------------------------
@SPECS
def test_the_role_allows_every_call_its_code_makes(synth, resolved, spec) -> None:
    statements = resolved.role_statements(_role(synth, spec))
    refused = sorted(
        (action, arn)
        for action, arn in needed(synth, resolved, spec)
        if not allows(statements, Request(action, arn))
    )
    assert not refused, f"{spec.name} may not: {refused}"


@SPECS
def test_the_role_allows_nothing_its_code_and_lambda_do_not_use(synth, resolved, spec) -> None:
    statements = resolved.role_statements(_role(synth, spec))
    extra = granted(statements) - needed(synth, resolved, spec) - lambdas_own(synth, resolved, spec)
    assert not extra, f"{spec.name} is granted what nothing uses: {sorted(extra)}"


@SPECS
def test_no_wildcard_actions_and_star_resources_only_for_xray(synth, spec) -> None:
    for statement in synth.function_statements(spec):
        assert statement["Effect"] == "Allow"
        actions = synth.as_list(statement["Action"])
        assert not any("*" in action for action in actions), statement
        if statement["Resource"] == "*":
            (xray,) = [g for g in access.FOR_LAMBDA if g.resource == access.ANY]
            assert set(actions) <= set(xray.actions), statement


@pytest.mark.parametrize("spec", topology.IMPORT_FUNCTIONS, ids=lambda s: s.name)
def test_import_functions_read_only_the_connections_their_organizations_use(
    synth, resolved, spec
) -> None:
    statements = resolved.role_statements(_role(synth, spec))
    readable = {
        name
        for lid, name in synth.secret_names().items()
        if allows(statements, Request("secretsmanager:GetSecretValue", resolved.attr(lid, "Arn")))
    }
    assert readable == {synth.names.connection_secret(c) for c in ("main", "eu")}


def test_only_the_token_keeper_and_import_functions_read_secrets(synth, resolved) -> None:
    for spec in (topology.STATUS_API, topology.REDRIVE):
        statements = resolved.role_statements(_role(synth, spec))
        assert not any(a.startswith("secretsmanager:") for a, _ in granted(statements))


def test_the_public_hook_function_reads_only_channel_tokens_and_sends_imports(
    synth, resolved
) -> None:
    statements = resolved.role_statements(_role(synth, topology.CRM_HOOKS))
    grants = granted(statements) - lambdas_own(synth, resolved, topology.CRM_HOOKS)
    actions = {action for action, _ in grants}
    assert actions == {"secretsmanager:GetSecretValue", "sqs:SendMessage"}
    (secrets,) = {arn for action, arn in grants if action.startswith("secretsmanager:")}
    assert secrets.endswith(f":secret:{synth.names.channel_secret_prefix}*")
    connection = resolved.attr(next(iter(synth.secret_names())), "Arn")
    assert not allows(statements, Request("secretsmanager:GetSecretValue", connection))
