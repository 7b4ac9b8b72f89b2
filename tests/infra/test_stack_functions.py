"""Every function: runtime, architecture, shared defaults, environment, code asset."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from crm_to_books import topology
from crm_to_books.settings import Settings
from infra.constructs.lambda_defaults import FUNCTIONS_ROOT
from infra.constructs.layer import RUNTIME
from infra.layer import PYTHON_VERSION, ROOT

SPECS = pytest.mark.parametrize("spec", topology.ALL_FUNCTIONS, ids=lambda s: s.name)
ENVIRONMENT = ("LEDGER_TABLE", "STATE_TABLE", "ORGANIZATIONS", "CONNECTIONS", "EVENT_BUS_NAME")


def _resolve(value: Any) -> str:
    """A stand-in for CloudFormation's resolution, enough to parse the environment."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_resolve(part) for part in parts)
    return "resolved"


def test_the_tests_run_on_the_python_the_functions_deploy_on():
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (ROOT / ".python-version").read_text(encoding="utf-8").strip() == PYTHON_VERSION
    assert RUNTIME.name == f"python{PYTHON_VERSION}"
    assert running == PYTHON_VERSION, f"make test runs {running}, Lambda {RUNTIME.name}"


@SPECS
def test_python_3_13_on_arm64_with_the_shared_defaults(synth, spec):
    _, props = synth.function(spec)
    assert props["Runtime"] == "python3.13"
    assert props["Architectures"] == ["arm64"]
    assert props["Handler"] == topology.HANDLER
    assert props["MemorySize"] == spec.memory_mb
    assert props["Timeout"] == spec.timeout_seconds
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert props["LoggingConfig"]["LogFormat"] == "JSON"
    (layer,) = synth.of_type("AWS::Lambda::LayerVersion")
    assert props["Layers"] == [{"Ref": layer}]


@SPECS
def test_environment_is_what_the_function_validates_at_cold_start(synth, spec):
    _, props = synth.function(spec)
    env = props["Environment"]["Variables"]
    for name in (*ENVIRONMENT, "QUEUE_URLS"):
        assert name in env, name
    assert env["POWERTOOLS_SERVICE_NAME"] == topology.SERVICE_NAME
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == topology.METRICS_NAMESPACE
    settings = Settings.from_env({k: _resolve(v) for k, v in env.items()})
    assert set(settings.organizations) == {"10234695", "2000000000000000001"}
    assert settings.organizations["2000000000000000001"].connection == "eu"
    assert settings.connections == {
        name: synth.names.connection_secret(name) for name in ("main", "eu", "spare")
    }
    assert settings.import_kind == spec.kind
    assert {"LEDGER_TABLE", "STATE_TABLE", "EVENT_BUS_NAME"} <= {
        k for k, v in env.items() if isinstance(v, dict) and "Ref" in v
    }


def test_import_functions_know_their_own_queue_and_redrive_knows_all(synth):
    for spec in topology.IMPORT_FUNCTIONS:
        _, props = synth.function(spec)
        urls = json.loads(_resolve(props["Environment"]["Variables"]["QUEUE_URLS"]))
        assert list(urls) == [spec.kind]
        assert props["Environment"]["Variables"]["IMPORT_KIND"] == spec.kind
        queue = synth.queue(synth.names.queue(spec.kind))
        assert queue in json.dumps(props["Environment"]["Variables"]["QUEUE_URLS"])
    _, redrive = synth.function(topology.REDRIVE)
    urls = json.loads(_resolve(redrive["Environment"]["Variables"]["QUEUE_URLS"]))
    assert sorted(urls) == sorted(spec.kind for spec in topology.IMPORT_FUNCTIONS)


@SPECS
def test_code_asset_is_the_handler_folder_alone_with_its_bytecode(synth, spec):
    _, props = synth.function(spec)
    asset_hash = props["Code"]["S3Key"].removesuffix(".zip")
    staged = synth.outdir / f"asset.{asset_hash}"
    shipped = {p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()}
    source = FUNCTIONS_ROOT / spec.handler_dir
    sources = [
        p.relative_to(source)
        for p in source.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    bytecode = [
        p.parent / "__pycache__" / f"{p.stem}.{sys.implementation.cache_tag}.pyc"
        for p in sources
        if p.suffix == ".py"
    ]
    assert "handler.py" in shipped
    assert shipped == {Path(p).as_posix() for p in [*sources, *bytecode]}


@SPECS
def test_handler_module_defines_the_entry_point(spec):
    module, function = topology.HANDLER.split(".")
    tree = ast.parse((FUNCTIONS_ROOT / spec.handler_dir / f"{module}.py").read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)} | {
        t.id
        for n in tree.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    assert function in defined, f"functions/{spec.handler_dir}/{module}.py defines no {function}"


def test_log_groups_keep_logs_for_the_configured_retention(synth):
    groups = synth.of_type("AWS::Logs::LogGroup")
    for spec in topology.ALL_FUNCTIONS:
        _, props = synth.function(spec)
        group = groups[props["LoggingConfig"]["LogGroup"]["Ref"]]
        assert group["LogGroupName"] == f"/aws/lambda/{synth.names.function(spec)}"
        assert group["RetentionInDays"] == 30
