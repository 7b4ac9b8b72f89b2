"""`crm-to-books sandbox` and `python -m crm_to_books_cli.sandbox`: serve until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from pydantic import ValidationError

from crm_to_books_cli.sandbox.config import Faults, SandboxConfig
from crm_to_books_cli.sandbox.server import ZohoSandbox


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8088, help="0 picks a free port (default 8088)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--config", metavar="FILE", help="JSON file of SandboxConfig fields")
    parser.add_argument("--token-lifetime", type=int, metavar="S", help="access token lifetime")
    parser.add_argument("--token-window", type=float, metavar="S", help="token throttle window")
    parser.add_argument("--rate-window", type=float, metavar="S", help="Books per-minute window")
    parser.add_argument("--day-length", type=float, metavar="S", help="Books daily-limit period")
    parser.add_argument("--reimport", choices=("return_existing", "error", "duplicate"))
    parser.add_argument("--result-key", choices=("contact_id", "customer_id"))
    parser.add_argument("--latency", type=float, metavar="S", help="latency of Books requests")
    parser.add_argument(
        "--faults", metavar="JSON", help="fault knobs, e.g. '{\"fail_5xx_rate\": 0.1}'"
    )
    parser.add_argument(
        "--auto-create-crm-records",
        action="store_true",
        help="any well-formed CRM id imports, record or not (benchmarks)",
    )
    parser.add_argument("--crm-credits", type=int, metavar="N", help="CRM API credits per day")
    parser.add_argument("--crm-concurrency", type=int, metavar="N", help="CRM calls in flight")
    parser.add_argument(
        "--crm-faults", metavar="JSON", help="CRM fault knobs, e.g. '{\"fail_429_rate\": 0.1}'"
    )
    parser.add_argument("--log-requests", action="store_true", help="log requests (redacted)")


def build_config(args: argparse.Namespace) -> SandboxConfig:
    settings: dict[str, Any] = {}
    if args.config:
        with open(args.config, encoding="utf-8") as file:
            settings = json.load(file)
    faults: dict[str, Any] = dict(settings.pop("faults", {}))
    crm: dict[str, Any] = dict(settings.pop("crm", {}))
    if args.crm_faults:
        crm["faults"] = {**crm.get("faults", {}), **json.loads(args.crm_faults)}
    crm_flags = {"credits_per_day": args.crm_credits, "max_concurrency": args.crm_concurrency}
    crm.update({name: value for name, value in crm_flags.items() if value is not None})
    if args.faults:
        faults.update(json.loads(args.faults))
    if args.latency is not None:
        faults["latency_seconds"] = args.latency
    flags = {
        "token_lifetime_seconds": args.token_lifetime,
        "token_window_seconds": args.token_window,
        "rate_window_seconds": args.rate_window,
        "day_seconds": args.day_length,
        "reimport": args.reimport,
        "contact_result_key": args.result_key,
        "log_requests": args.log_requests or None,
        "auto_create_crm_records": args.auto_create_crm_records or None,
    }
    settings.update({name: value for name, value in flags.items() if value is not None})
    return SandboxConfig.model_validate(
        {**settings, "faults": Faults.model_validate(faults), "crm": crm}
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = build_config(args)
        sandbox = ZohoSandbox(port=args.port, host=args.host, config=config).start()
    except (OSError, ValueError, ValidationError) as error:
        print(f"crm-to-books sandbox: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        print(json.dumps(sandbox.startup_info()), flush=True)
        stop.wait()
    finally:
        sandbox.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m crm_to_books_cli.sandbox", description="Run the local Zoho sandbox."
    )
    add_arguments(parser)
    return run(parser.parse_args())
