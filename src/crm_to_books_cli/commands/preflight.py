"""`crm-to-books preflight [--stack NAME] [--template PATH] [--json]`: check the account and region
before a deploy (CDK bootstrap, the account's API Gateway log role, Lambda concurrency, resources
an earlier stack left with the stack's names) and, once the stack is deployed, whether the
service can work (connections set, token keeper healthy, alarm subscriptions confirmed).

Read-only, with the operator's AWS credentials. Exit 1 when a finding blocks, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from crm_to_books import topology
from crm_to_books_cli import output, target
from crm_to_books_cli.api_client import dumps
from crm_to_books_cli.preflight import BLOCKING, WARNING, Finding, Preflight, Stack, Template
from crm_to_books_cli.target import CliError, Target

MARK = {"ok": "ok", WARNING: "WARNING", BLOCKING: "BLOCKING"}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "preflight",
        help="check the account before a deploy, and the stack after it",
        description="Checks the account and region the way CloudFormation will meet the "
        "stack's template (CDK bootstrap, the account's API Gateway log role, Lambda "
        "concurrency against the queues' MaximumConcurrency, resources with the stack's names "
        "left by an earlier stack) and, once deployed, each connection's secret, the token "
        "keeper and the alarm subscriptions. Each finding says what to do. Exit 1 when one "
        "blocks.",
    )
    parser.add_argument(
        "--template",
        help="the template to check (default: cdk.out/STACK.template.json from `make synth`, "
        "else the deployed stack's)",
    )
    parser.add_argument(
        "--import-existing",
        action="store_true",
        help="you will deploy with `npx aws-cdk deploy --import-existing-resources`: resources "
        "the stack keeps are adopted, not in the way",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    target.add_arguments(parser)
    parser.set_defaults(func=target.command(run))


def run(args: argparse.Namespace) -> int:
    if args.local or args.api_url or args.aws_endpoint:
        raise CliError("preflight checks an AWS account: pass --stack (and --profile/--region)")
    session = target.aws_session(args)
    stack_name = args.stack or os.environ.get("CRM_TO_BOOKS_STACK") or target.DEFAULT_STACK
    where = Target(
        session=session,
        names=topology.Names(args.prefix or stack_name),
        api_url=None,
        description=f"stack {stack_name} in {session.region_name}",
    )
    account = where.client("sts").get_caller_identity()["Account"]
    stack = _stack(where, stack_name)
    source, body = _template(where, stack, args.template)
    checks = Preflight(
        where, Template(body), stack, account=account, importing=args.import_existing
    )
    findings = checks.findings()
    blocking = [f for f in findings if f.status == BLOCKING]
    warnings = [f for f in findings if f.status == WARNING]
    if args.json:
        print(
            dumps(
                {
                    "stack": stack_name,
                    "region": where.region,
                    "account": account,
                    "template": source,
                    "deployed": stack.deployed,
                    "findings": [f.as_dict() for f in findings],
                    "blocking": len(blocking),
                    "warnings": len(warnings),
                }
            )
        )
    else:
        _print(where, account, source, stack, findings)
    return 1 if blocking else 0


def _stack(where: Target, name: str) -> Stack:
    cloudformation = where.client("cloudformation")
    try:
        (described,) = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ValidationError":  # no such stack
            return Stack(name, None, {})
        raise
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    return Stack(name, str(described["StackStatus"]), outputs)


def _template(where: Target, stack: Stack, path: str | None) -> tuple[str, dict[str, Any]]:
    """The template given, else `make synth`'s, else the deployed stack's."""
    synthesized = Path("cdk.out") / f"{stack.name}.template.json"
    chosen = Path(path) if path else synthesized if synthesized.is_file() else None
    if chosen is not None:
        try:
            return str(chosen), dict(json.loads(chosen.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise CliError(f"--template: cannot read {chosen}: {exc}") from None
    if stack.status is None:
        raise CliError(
            f"no template: stack {stack.name} is not deployed and {synthesized} does not exist; "
            "run `make synth` (or npx aws-cdk synth) first, or pass --template"
        )
    body = where.client("cloudformation").get_template(StackName=stack.name)["TemplateBody"]
    return f"the deployed stack {stack.name}", body if isinstance(body, dict) else json.loads(body)


def _print(where: Target, account: str, source: str, stack: Stack, findings: list[Finding]) -> None:
    out = output.console()
    out.print(f"preflight: {where.description} (account {account}), template {source}")
    for finding in findings:
        out.print(f"  {MARK[finding.status]:<8}  {finding.check:<12}  {finding.message}")
        if finding.action and finding.status != "ok":
            out.print(f"  {'':<8}  {'':<12}  -> {finding.action}")
    blocking = sum(f.status == BLOCKING for f in findings)
    warnings = sum(f.status == WARNING for f in findings)
    verdict = "fix the blocking findings first" if blocking else "nothing blocks"
    out.print(f"{blocking} blocking, {warnings} warning(s): {verdict}")
    if not stack.deployed:
        out.print(
            "after the deploy, run preflight again: it then checks the connections, the "
            "token keeper and the alarm subscriptions"
        )
