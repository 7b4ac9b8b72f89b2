"""Synthesizes the stack once per session (synth takes seconds) and reads the template."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crm_to_books.topology import FunctionSpec, Names
from infra.app import build_app
from infra.config import parse_config

# Two organizations on two connections, plus a connection no organization uses.
CONFIG: dict[str, Any] = {
    "stage": "test",
    "connections": ["main", "eu", "spare"],
    "organizations": {
        "10234695": {"connection": "main"},
        "2000000000000000001": {"connection": "eu", "max_concurrency": 5},
    },
    "schedules": [
        {
            "name": "nightly-item",
            "expression": "cron(0 2 * * ? *)",
            "kind": "item",
            "organization_id": "10234695",
            "crm_id": "4000000000123",
        }
    ],
    "syncs": [
        {
            "organization_id": "10234695",
            "kind": "account",
            "schedule": "rate(15 minutes)",
            "filter": {"Account_Type": ["Customer", "Reseller"]},
            "max_records_per_run": 2000,
        }
    ],
    "alarm_email": "ops@example.com",
    "queue_concurrency": 3,
}


class Synth:
    """The synthesized template, with look-ups by the names topology gives resources."""

    def __init__(self, outdir: Path, template_file: str, prefix: str) -> None:
        self.outdir = outdir
        self.names = Names(prefix)
        self.template: dict[str, Any] = json.loads((outdir / template_file).read_text())
        self.resources: dict[str, dict[str, Any]] = self.template["Resources"]

    def of_type(self, type_: str) -> dict[str, dict[str, Any]]:
        return {
            lid: r.get("Properties", {}) for lid, r in self.resources.items() if r["Type"] == type_
        }

    def function(self, spec: FunctionSpec) -> tuple[str, dict[str, Any]]:
        name = self.names.function(spec)
        (found,) = [
            (lid, p)
            for lid, p in self.of_type("AWS::Lambda::Function").items()
            if p.get("FunctionName") == name
        ]
        return found

    def queue(self, name: str) -> str:
        (lid,) = [
            lid for lid, p in self.of_type("AWS::SQS::Queue").items() if p["QueueName"] == name
        ]
        return lid

    def secret_names(self) -> dict[str, str]:
        return {lid: p["Name"] for lid, p in self.of_type("AWS::SecretsManager::Secret").items()}

    def role_statements(self, role_id: str) -> list[dict[str, Any]]:
        """Every statement granted to the role, from inline and attached policies."""
        statements: list[dict[str, Any]] = []
        for props in self.of_type("AWS::IAM::Policy").values():
            if {"Ref": role_id} in props["Roles"]:
                statements += props["PolicyDocument"]["Statement"]
        for policy in self.resources[role_id]["Properties"].get("Policies", []):
            statements += policy["PolicyDocument"]["Statement"]
        assert "ManagedPolicyArns" not in self.resources[role_id]["Properties"]
        return statements

    def function_statements(self, spec: FunctionSpec) -> list[dict[str, Any]]:
        _, props = self.function(spec)
        return self.role_statements(props["Role"]["Fn::GetAtt"][0])

    @staticmethod
    def as_list(value: Any) -> list[Any]:
        return value if isinstance(value, list) else [value]

    @classmethod
    def actions_on(cls, statements: list[dict[str, Any]], resource_id: str) -> set[str]:
        """The actions allowed on resources that reference `resource_id` (Ref or GetAtt)."""
        found: set[str] = set()
        for statement in statements:
            if resource_id in json.dumps(statement["Resource"]):
                found |= set(cls.as_list(statement["Action"]))
        return found


def synthesize(raw: dict[str, Any], outdir: Path) -> Synth:
    config = parse_config(raw, "tests")
    app, stack = build_app(config, outdir=str(outdir))
    app.synth()  # cdk-nag runs here: any unacknowledged finding fails the synth
    return Synth(outdir, stack.template_file, config.prefix)


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synth]:
    yield synthesize(CONFIG, tmp_path_factory.mktemp("cdk.out"))
