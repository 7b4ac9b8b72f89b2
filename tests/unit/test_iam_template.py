"""A function's role read from a template (`crm_to_books_cli.iam.cfn`), and the template's cache
(`crm_to_books_cli.iam.synth`): keyed by what the synthesis reads, nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crm_to_books_cli.iam import synth
from crm_to_books_cli.iam.cfn import Env, Resolved

ENV = Env("aws", "us-east-1", "123456789012")
BUS = "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/p-bus"
GRANT = {
    "Effect": "Allow",
    "Action": "dynamodb:GetItem",
    "Resource": {"Fn::GetAtt": ["Table", "Arn"]},
}


def template(**role_properties: Any) -> dict[str, Any]:
    """A function, its role, a table, a secret and policies of every kind that can attach."""
    arn = {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":iam::aws:policy/ReadOnly"]]}
    return {
        "Resources": {
            "Table": {"Type": "AWS::DynamoDB::Table", "Properties": {"TableName": "p-ledger"}},
            "Secret": {"Type": "AWS::SecretsManager::Secret", "Properties": {"Name": "p/conn"}},
            "Role": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "Policies": [
                        {"PolicyName": "inline", "PolicyDocument": {"Statement": [GRANT]}}
                    ],
                    "ManagedPolicyArns": [{"Ref": "Managed"}, arn],
                    **role_properties,
                },
            },
            "Attached": {
                "Type": "AWS::IAM::Policy",
                "Properties": {
                    "Roles": [{"Ref": "Role"}],
                    "PolicyDocument": {
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Action": "secretsmanager:GetSecretValue",
                                "Resource": {"Ref": "Secret"},
                            }
                        ]
                    },
                },
            },
            "Managed": {
                "Type": "AWS::IAM::ManagedPolicy",
                "Properties": {
                    "PolicyDocument": {
                        "Statement": [{"Effect": "Deny", "Action": "sqs:*", "Resource": "*"}]
                    }
                },
            },
            "ByItsRoles": {
                "Type": "AWS::IAM::ManagedPolicy",
                "Properties": {
                    "Roles": [{"Ref": "Role"}],
                    "PolicyDocument": {
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Action": "events:PutEvents",
                                "Resource": {"Fn::Sub": BUS},
                            }
                        ]
                    },
                },
            },
            "Function": {
                "Type": "AWS::Lambda::Function",
                "Properties": {
                    "FunctionName": "p-status-api",
                    "Role": {"Fn::GetAtt": ["Role", "Arn"]},
                },
            },
        }
    }


def test_a_functions_role_holds_every_identity_policy_attached_to_it() -> None:
    secret_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:p/conn-Xy12Zq"
    resolved = Resolved(template(), ENV, stack_name="p", arns={"Secret": secret_arn})

    [(function, role)] = resolved.function_roles().items()

    assert function == "p-status-api"
    # A name shaped like CloudFormation's (the stack, the logical id, a random suffix)
    assert role.name.startswith("p-Role-") and len(role.name) == len("p-Role-") + 12
    assert role.arn == f"arn:aws:iam::123456789012:role/{role.name}"
    assert role.statements == (
        {
            "Effect": "Allow",
            "Action": "dynamodb:GetItem",
            "Resource": "arn:aws:dynamodb:us-east-1:123456789012:table/p-ledger",
        },
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": secret_arn},
        {"Effect": "Deny", "Action": "sqs:*", "Resource": "*"},
        {
            "Effect": "Allow",
            "Action": "events:PutEvents",
            "Resource": "arn:aws:events:us-east-1:123456789012:event-bus/p-bus",
        },
    )  # AWS's own managed policy (not in the template) adds nothing: its document is unknown


def test_a_named_role_keeps_its_name() -> None:
    resolved = Resolved(template(RoleName="fixed"), ENV)
    assert resolved.function_roles()["p-status-api"].name == "fixed"


# --- the cache -----------------------------------------------------------------------------------
LIBRARY = Path("layers/core/python/crm_to_books")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The files a synthesis reads, and one it does not (the engine)."""
    files = {
        "infra/app.py": "from crm_to_books import topology\n",
        "infra/constructs/grants.py": "from crm_to_books.access import Resource\n",
        "cdk.json": "{}",
        "uv.lock": "aws-cdk-lib 2",
        LIBRARY / "topology.py": "from crm_to_books.entities import KINDS\n",
        LIBRARY / "entities.py": "KINDS = ()\n",
        LIBRARY / "access.py": "import crm_to_books.topology\n",
        LIBRARY / "pipeline.py": "from crm_to_books import ledger\n",
        LIBRARY / "ledger.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


CONFIG = synth.local_config("p", {"1": {"connection": "default"}}, ["default"])


def test_the_inputs_are_infra_its_settings_and_the_library_modules_it_imports(repo: Path) -> None:
    inputs = {p.relative_to(repo).as_posix() for p in synth.inputs(repo)}

    assert inputs == {
        "infra/app.py",
        "infra/constructs/grants.py",
        "cdk.json",
        "uv.lock",
        *(f"{LIBRARY.as_posix()}/{m}.py" for m in ("topology", "entities", "access")),
    }


@pytest.mark.parametrize(
    ("changed", "counts"),
    [
        ("infra/constructs/grants.py", True),
        ("cdk.json", True),
        ("uv.lock", True),
        (LIBRARY / "entities.py", True),  # imported by what infra imports
        (LIBRARY / "pipeline.py", False),  # the engine: no role changes with it
    ],
)
def test_the_cache_key_changes_with_what_the_synthesis_reads(
    repo: Path, changed: str, counts: bool
) -> None:
    before = synth.digest(CONFIG, repo)
    (repo / changed).write_text((repo / changed).read_text() + "\n# changed\n")

    assert (synth.digest(CONFIG, repo) != before) is counts
    other = synth.local_config("q", {"1": {"connection": "default"}}, ["default"])
    assert synth.digest(other, repo) != synth.digest(CONFIG, repo)


def test_a_template_is_synthesized_once_then_read_from_the_cache(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[dict[str, Any]] = []

    def synthesize(config: dict[str, Any]) -> dict[str, Any]:
        made.append(config)
        return {"Resources": {}, "made": len(made)}

    monkeypatch.setattr(synth, "synthesize", synthesize)
    monkeypatch.setattr(synth, "in_process", True)
    cache = tmp_path / "cache"

    first = synth.Synthesis(CONFIG, cache, repo)
    assert not first.hit and first.template()["made"] == 1
    again = synth.Synthesis(CONFIG, cache, repo)
    assert again.hit and again.template()["made"] == 1
    assert made == [CONFIG]
    assert json.loads(first.path.read_text())["made"] == 1
