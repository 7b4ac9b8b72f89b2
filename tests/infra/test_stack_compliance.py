"""cdk-nag (AwsSolutions) has nothing unacknowledged; cfn-lint finds no errors."""

from __future__ import annotations

import json

from cfnlint.api import lint

from tests.infra.conftest import CONFIG, synthesize


def test_cdk_nag_reports_no_findings_and_every_acknowledgment_has_a_reason(synth):
    # The synth itself fails on any unacknowledged finding; the report says so too.
    report = json.loads((synth.outdir / "validation-report.json").read_text())
    assert not [v for r in report["pluginReports"] for v in r["violations"]]
    acknowledged = {
        lid: r["Metadata"]["cdk_nag"]["rules_to_suppress"]
        for lid, r in synth.resources.items()
        if "cdk_nag" in r.get("Metadata", {})
    }
    assert acknowledged, "cdk-nag did not run: no acknowledgment reached the template"
    for lid, rules in acknowledged.items():
        for rule in rules:
            assert len(rule["reason"]) >= 30, (lid, rule)
            # Wildcards are acknowledged finding by finding, never a whole rule.
            assert rule["id"] != "AwsSolutions-IAM5", lid


def test_secrets_are_acknowledged_one_by_one_for_rotation(synth):
    for lid in synth.of_type("AWS::SecretsManager::Secret"):
        ids = {r["id"] for r in synth.resources[lid]["Metadata"]["cdk_nag"]["rules_to_suppress"]}
        assert ids == {"AwsSolutions-SMG4"}


def test_cfn_lint_finds_no_errors(synth):
    matches = lint(json.dumps(synth.template), regions=["us-east-1", "eu-west-1"])
    # W3005 (a DependsOn also implied by GetAtt) is how CDK orders a function after its policy.
    problems = [m for m in matches if m.rule.id != "W3005"]
    assert not problems, "\n".join(str(m) for m in problems)


def test_no_arn_names_its_partition(synth):
    # aws-cn and aws-us-gov must work too: every ARN takes AWS::Partition.
    assert "arn:aws:" not in json.dumps(synth.template)


def test_cdk_nag_passes_when_the_cdk_cli_knows_the_account_and_region(tmp_path, monkeypatch):
    # `npx aws-cdk deploy` sets these: partition and region become literals in the template,
    # and every acknowledgment must still name its finding.
    monkeypatch.setenv("CDK_DEFAULT_ACCOUNT", "111122223333")
    monkeypatch.setenv("CDK_DEFAULT_REGION", "us-gov-west-1")
    synth = synthesize(CONFIG, tmp_path)  # raises on any unacknowledged finding
    report = json.loads((synth.outdir / "validation-report.json").read_text())
    assert not [v for r in report["pluginReports"] for v in r["violations"]]
    assert "arn:aws-us-gov:" in json.dumps(synth.template)
    assert "arn:aws:" not in json.dumps(synth.template)
