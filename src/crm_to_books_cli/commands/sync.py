"""`crm-to-books sync KIND --org ORG [--since ISO8601] [--json]`: one CRM sweep now, run by the
stack's sweep function (the one its schedules invoke; in the local stack, the local one).

Exit 0 when the sweep reached the last change, 1 when it stopped first (its limits, another
run holding the checkpoint, or a problem: the message says which), 2 for a usage error.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from crm_to_books import topology
from crm_to_books.entities import KINDS
from crm_to_books_cli import output, target
from crm_to_books_cli.api_client import dumps
from crm_to_books_cli.target import CliError

COUNTS = ("found", "queued", "already_imported", "filtered")
SHOWN = (*COUNTS, "checkpoint")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "sync",
        help="sweep Zoho CRM for changed records now and queue their imports",
        description="Runs one sweep of KIND's CRM module for the organization on the target "
        "stack: records created or changed since the sync's checkpoint (or --since) that its "
        "filter keeps and that are not imported yet are queued for import. Prints what it "
        "found, queued, skipped as already imported and skipped by the filter. Exit 0 when the "
        "sweep reached the last change, 1 when it stopped before (the next run continues).",
    )
    parser.add_argument("kind", metavar="KIND", choices=KINDS, help=", ".join(KINDS))
    parser.add_argument("--org", required=True, help="the Books organization_id")
    parser.add_argument(
        "--since",
        help="sweep from this time (ISO 8601 with an offset, e.g. 2025-01-01T00:00:00Z) "
        "without reading or moving the sync's checkpoint",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    target.add_arguments(parser)
    parser.set_defaults(func=target.command(run))


def since_of(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CliError(f"--since: not an ISO 8601 time, got {value!r}") from None
    if parsed.tzinfo is None:
        raise CliError(f"--since: needs an offset (e.g. Z or +05:30), got {value!r}")
    return parsed.isoformat()


def run(args: argparse.Namespace) -> int:
    event: dict[str, Any] = {"action": "sweep", "organization_id": args.org, "kind": args.kind}
    since = since_of(args.since)
    if since:
        event["since"] = since
    where = target.resolve(args)
    function = where.names.function(topology.SWEEP)
    answer = where.invoke(function, event, read_timeout=topology.SWEEP_TIMEOUT_SECONDS + 30)
    sweep = refused(answer, "sweep")
    if args.json:
        print(dumps({name: sweep.get(name) for name in (*SHOWN, "complete", "stopped", "message")}))
    else:
        out = output.console()
        out.print(
            f"{args.kind} sweep of organization {args.org}"
            + (f" since {sweep.get('since')}" if sweep.get("since") else "")
            + f" ({sweep.get('crm_calls', 0)} CRM call(s), {sweep.get('seconds', 0):.1f} s)"
        )
        for name in SHOWN:
            out.print(f"  {name:<17} {sweep.get(name) if sweep.get(name) is not None else '-'}")
        if sweep.get("complete"):
            out.print("complete: every change up to now is queued or skipped")
        else:
            out.print(f"stopped ({sweep.get('stopped')}): {sweep.get('message')}")
    return 0 if sweep.get("complete") else 1


def refused(answer: Any, key: str) -> dict[str, Any]:
    """The function's answer under `key`; its refusal as a CliError."""
    if not isinstance(answer, dict):
        raise CliError(f"the sweep function answered something unexpected: {answer!r:.200}")
    if "error" in answer:
        error = answer["error"] or {}
        raise CliError(str(error.get("message") or error))
    value = answer.get(key)
    if key not in answer:
        raise CliError(f"the sweep function answered without {key!r}: {answer!r:.200}")
    return value if isinstance(value, dict) else {}
