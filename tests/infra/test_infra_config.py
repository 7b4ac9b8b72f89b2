"""The stack configuration is validated at synth time, with errors naming the field."""

from __future__ import annotations

import importlib.resources
import json
import tarfile
from pathlib import Path

import pytest

from infra.app import main
from infra.config import ConfigError, load_config_file, parse_config
from infra.layer import ROOT
from tests.infra.conftest import CONFIG

# Flags whose value here is not CDK's recommendation, and why (in the test below).
CHOSEN_DIFFERENTLY = {"@aws-cdk/core:target-partitions"}


def _error(**changes):
    with pytest.raises(ConfigError) as caught:
        parse_config({**CONFIG, **changes}, "test")
    return str(caught.value)


def test_the_shipped_cdk_json_configuration_is_valid():
    raw = json.loads((ROOT / "cdk.json").read_text())["context"]["crm-to-books"]
    config = parse_config(raw, "cdk.json")
    assert config.prefix == raw["prefix"]


def test_prefix_defaults_from_the_stage():
    assert parse_config(CONFIG, "test").prefix == "crm-to-books-test"


def test_organization_ids_must_be_decimal_strings():
    message = _error(organizations={"12ab": {"connection": "main"}})
    assert "organizations:" in message
    assert "1 to 19 digits" in message
    assert "12ab" in message


def test_organizations_must_use_declared_connections():
    message = _error(organizations={"123": {"connection": "nope"}})
    assert "organizations.123.connection: 'nope' is not declared in connections" in message


def test_organization_limits_are_checked():
    message = _error(organizations={"123": {"connection": "main", "requests_per_minute": 0}})
    assert "organizations.123.requests_per_minute" in message


def test_schedules_name_a_kind_a_configured_organization_and_a_valid_expression():
    schedule = {**CONFIG["schedules"][0], "kind": "invoice"}
    assert "schedules.0.kind: 'invoice' is not a kind" in _error(schedules=[schedule])
    schedule = {**CONFIG["schedules"][0], "organization_id": "999"}
    assert "schedules.0.organization_id: '999'" in _error(schedules=[schedule])
    schedule = {**CONFIG["schedules"][0], "expression": "every day"}
    assert "schedules.0.expression" in _error(schedules=[schedule])
    same = CONFIG["schedules"][0]
    assert "used twice" in _error(schedules=[same, same])


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"kind": "deal"}, "syncs.0.kind: must be one of account, contact, vendor, item"),
        ({"organization_id": "999"}, "syncs.0.organization_id: '999' is not one of the"),
        ({"schedule": "every hour"}, "syncs.0.schedule: 'every hour' is not a repeating"),
        ({"schedule": "at(2030-01-01T00:00:00)"}, "syncs.0.schedule: 'at(2030-01-01T00:00:00)'"),
        ({"filter": {"Account Type": ["Customer"]}}, "syncs.0.filter.Account Type.[key]"),
        ({"filter": {"Account_Type": []}}, "syncs.0.filter: Account_Type: give 1 to 100"),
        ({"filter": {"Modified_Time": ["x"]}}, "Modified_Time: cannot be filtered on"),
        ({"filter": {f"Field_{i}": ["x"] for i in range(11)}}, "syncs.0.filter: Dictionary"),
        ({"start": "2025-01-01T00:00:00"}, "syncs.0.start: needs a UTC offset"),
        ({"start": "soon"}, "syncs.0.start: Input should be a valid datetime"),
        ({"max_records_per_run": 0}, "syncs.0.max_records_per_run"),
        ({"max_records_per_run": 100_001}, "syncs.0.max_records_per_run"),
        ({"limit": 5}, "syncs.0.limit: Extra inputs are not permitted"),
    ],
)
def test_syncs_are_checked_field_by_field(change, said):
    assert said in _error(syncs=[{**CONFIG["syncs"][0], **change}])


def test_a_sync_needs_only_its_organization_kind_and_schedule_and_sweeps_each_pair_once():
    [sync] = parse_config(
        {**CONFIG, "syncs": [{"organization_id": "10234695", "kind": "item",
                              "schedule": "cron(0 * * * ? *)"}]},
        "t",
    ).syncs  # fmt: skip
    assert (sync.filter, sync.start, sync.max_records_per_run) == ({}, None, 5000)
    same = CONFIG["syncs"][0]
    message = _error(syncs=[same, {**same, "schedule": "rate(1 hour)"}])
    assert "syncs.1: account of 10234695 is swept twice" in message


def test_unknown_keys_and_bad_values_are_refused():
    assert "colour" in _error(colour="blue")
    assert "api.auth" in _error(api={"auth": "cognito"})
    assert "log_retention_days" in _error(log_retention_days=31)
    assert "stage" in _error(stage="Prod!")


def test_ledger_data_is_never_public():
    assert "cannot be public" in _error(api={"public_paths": ["/v1/imports"]})
    parse_config({**CONFIG, "api": {"public_paths": ["/v1/health", "/v1/openapi.json"]}}, "t")


def test_too_many_organizations_for_lambda_environment():
    organizations = {str(10**12 + i): {"connection": "main"} for i in range(80)}
    organizations["10234695"] = {"connection": "main"}  # the schedule's
    assert "4096" in _error(organizations=organizations)


def test_config_file_errors_name_the_file(tmp_path):
    path = tmp_path / "stack.json"
    path.write_text(json.dumps({**CONFIG, "organizations": {}}))
    with pytest.raises(ConfigError, match=r"stack\.json"):
        load_config_file(path)


def test_app_reports_a_bad_config_file_and_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CDK_CONTEXT_JSON", raising=False)
    monkeypatch.delenv("CDK_OUTDIR", raising=False)
    path = tmp_path / "stack.json"
    path.write_text(json.dumps({**CONFIG, "connections": []}))
    assert main(["--config", str(path)]) == 2
    assert "connections" in capsys.readouterr().err


@pytest.mark.parametrize("value", [1, 0, 1001, "many"])
def test_queue_concurrency_is_what_aws_accepts(value):
    message = _error(queue_concurrency=value)
    assert "queue_concurrency" in message


def test_the_account_logging_role_is_created_unless_told_to_leave_it():
    assert parse_config(CONFIG, "t").api.cloudwatch_role == "create"
    api = {"cloudwatch_role": "existing"}
    assert parse_config({**CONFIG, "api": api}, "t").api.cloudwatch_role == "existing"
    assert "api.cloudwatch_role" in _error(api={"cloudwatch_role": "mine"})


def test_cdk_json_has_every_feature_flag_cdk_recommends_for_the_installed_version():
    # The aws-cdk-lib package ships its recommendations (what `cdk init` writes).
    shipped = Path(str(importlib.resources.files("aws_cdk._jsii")))
    (bundle,) = shipped.glob("aws-cdk-lib@*.jsii.tgz")
    with tarfile.open(bundle) as archive:
        member = archive.extractfile("package/recommended-feature-flags.json")
        assert member is not None
        recommended = json.loads(member.read())
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    different = {
        flag: (value, context.get(flag))
        for flag, value in recommended.items()
        if context.get(flag) != value and flag not in CHOSEN_DIFFERENTLY
    }
    assert not different, f"cdk.json differs from CDK's recommended flags: {different}"
    # GovCloud is a partition this stack deploys to as well.
    assert set(recommended["@aws-cdk/core:target-partitions"]) < set(
        context["@aws-cdk/core:target-partitions"]
    )
