"""`crm-to-books dev` (`make dev`): run the local stack in the foreground until Ctrl-C/SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from crm_to_books import topology

ENV_PORTS = {"api_port": ("API_PORT", 3000), "aws_port": ("AWS_PORT", 4566)}
ENV_SCHEDULES = {
    "token-keeper": ("token_keeper_every", "TOKEN_KEEPER_EVERY_SECONDS"),
    "redrive": ("redrive_every", "REDRIVE_EVERY_SECONDS"),
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="run the service locally: AWS emulator, Zoho sandbox, HTTP API, queues, schedules",
        description="Run the local stack in the foreground until Ctrl-C (see docs/local.md). "
        "Set ZOHO_ACCOUNTS_URL, ZOHO_CLIENT_ID, ZOHO_CLIENT_SECRET, ZOHO_REFRESH_TOKEN and "
        "ZOHO_ORGANIZATION_IDS to use a real Zoho account instead of the sandbox.",
    )
    parser.add_argument("--api-port", type=int, help="HTTP API port (env API_PORT, 3000)")
    parser.add_argument("--aws-port", type=int, help="AWS emulator port (env AWS_PORT, 4566)")
    parser.add_argument("--prefix", default=topology.DEFAULT_PREFIX, help="resource name prefix")
    for name, (dest, env) in ENV_SCHEDULES.items():
        parser.add_argument(
            f"--{name}-every",
            dest=dest,
            type=float,
            metavar="SECONDS",
            help=f"fire the {name} schedule this often (env {env})",
        )
    parser.add_argument("--functions-dir", type=Path, help="handler folders (default functions/)")
    parser.add_argument(
        "--layer-dir",
        type=Path,
        action="append",
        default=[],
        help="an extra layer folder on every function's path (repeatable)",
    )
    parser.add_argument(
        "--no-iam",
        dest="iam",
        action="store_false",
        help="do not check the functions' AWS calls against their roles (needed only where the "
        "CDK app cannot be synthesized)",
    )
    parser.set_defaults(func=run)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """LocalStack's arguments from flags, then the environment, then defaults."""
    options: dict[str, Any] = {"prefix": args.prefix, "iam": args.iam}
    for dest, (env, default) in ENV_PORTS.items():
        value = getattr(args, dest)
        if value is None:
            raw = os.environ.get(env, "").strip() or str(default)
            if not raw.isdigit():
                raise ValueError(f"{env} must be a port number, got {raw!r}")
            value = int(raw)
        options[dest] = value
    schedules = {}
    for name, (dest, env) in ENV_SCHEDULES.items():
        value = getattr(args, dest)
        if value is None and os.environ.get(env):
            value = float(os.environ[env])
        if value is not None:
            schedules[name] = value
    options["schedule_seconds"] = schedules
    if args.functions_dir:
        options["functions_root"] = args.functions_dir.resolve()
    return options


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="[local] %(message)s", stream=sys.stdout)
    from crm_to_books_cli.iam.synth import SynthesisFailed
    from crm_to_books_cli.local.emulator import PortInUse
    from crm_to_books_cli.local.stack import REPO_ROOT, LocalStack
    from crm_to_books_cli.local.zoho import ZohoAccount

    try:
        options = _options(args)
        zoho = ZohoAccount.from_env(os.environ)
    except ValueError as exc:
        print(f"crm-to-books dev: {exc}", file=sys.stderr)
        return 2
    layers = (REPO_ROOT / "layers" / "core" / "python", *(d.resolve() for d in args.layer_dir))
    stack = LocalStack(zoho=zoho, layer_dirs=layers, **options)

    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        stack.start()
    except PortInUse as exc:
        print(f"crm-to-books dev: {exc}", file=sys.stderr)
        return 1
    except SynthesisFailed as exc:
        print(f"crm-to-books dev: {exc}\n(--no-iam starts without the roles)", file=sys.stderr)
        return 1
    try:
        print(banner(stack), flush=True)
        while not stopping.wait(0.5):
            pass
    finally:
        print("stopping the local stack...", flush=True)
        stack.stop()
    print("stopped", flush=True)
    return 0


def banner(stack: Any) -> str:
    """What runs, and three commands to paste."""
    zoho = stack.zoho
    orgs = ", ".join(zoho.organizations)
    which = "sandbox" if stack.sandbox is not None else "ZOHO_ACCOUNTS_URL"
    org = zoho.organizations[0] if zoho.organizations else "<organization_id>"
    ids = list(zoho.crm_ids.get("account", ())) or ["<crm_account_id>"]
    every = ", ".join(
        f"{name} every {seconds / 60:g} min" if seconds >= 60 else f"{name} every {seconds:g} s"
        for name, seconds in stack.schedule_seconds.items()
    )
    width = max(len(k) for k in stack.queue_urls)
    queues = "\n".join(f"    {kind:<{width}}  {url}" for kind, url in stack.queue_urls.items())
    message = json.dumps({"organization_id": org, "crm_id": ids[-1]}, separators=(",", ":"))
    api, aws = stack.api_url, stack.aws_endpoint
    iam = (
        "each function's role from the synthesized template, checked on every AWS call"
        if stack.iam is not None
        else "off (--no-iam): any call is allowed"
    )
    return f"""
crm-to-books local stack (prefix {stack.names.prefix})
  HTTP API      {api}  (API Gateway REST proxy events, stage {topology.API_STAGE})
  AWS emulator  {aws}  (moto; region us-east-1, any credentials)
  Zoho          {zoho.accounts_url}  ({which}; organizations {orgs})
  functions     {stack.functions_root}  (containers start on first use)
  IAM           {iam}
  schedules     {every}
  queues        (each with its DLQ, the same URL ending in -dlq)
{queues}

Try:
  curl -X POST '{api}/v1/crm/account/{ids[0]}/import?organization_id={org}'
  curl '{api}/v1/imports/account/{ids[0]}?organization_id={org}'
  AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local aws --region us-east-1 \\
    --endpoint-url {aws} sqs send-message \\
    --queue-url {stack.queue_urls["account"]} --message-body '{message}'
  crm-to-books sync account --org {org} --api-url {api} --aws-endpoint {aws}
  crm-to-books watch enable --org {org} --api-url {api} --aws-endpoint {aws}

ready in {stack.startup_seconds:.1f} s: Ctrl-C stops everything
"""
