"""`crm-to-books status [KIND CRM_ID] --org ORG`: one import record, or a listing."""

from __future__ import annotations

import argparse
from typing import Any

from crm_to_books.entities import KINDS
from crm_to_books.models import Status
from crm_to_books_cli import output, target
from crm_to_books_cli.api_client import Api, dumps
from crm_to_books_cli.target import CliError

FIELDS = (
    "status", "books_id", "attempts", "created_at", "updated_at", "next_attempt_at", "parked",
    "in_dlq", "sources", "correlation_ids",
)  # fmt: skip


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "status",
        help="one import's record, or an organization's imports",
        description="With KIND CRM_ID: that import's ledger record (exit 1 if none). "
        "Without: the organization's imports, newest pages first, filtered by --status/--kind.",
    )
    parser.add_argument("kind", metavar="KIND", nargs="?", choices=KINDS, help=", ".join(KINDS))
    parser.add_argument("crm_id", metavar="CRM_ID", nargs="?", help="the CRM record's id")
    parser.add_argument("--org", required=True, help="the Books organization_id")
    parser.add_argument("--status", dest="status_filter", choices=[s.value for s in Status])
    parser.add_argument("--kind", dest="kind_filter", choices=KINDS, help="listing: only this kind")
    parser.add_argument("--limit", type=int, default=100, help="listing: at most N (default 100)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    target.add_arguments(parser)
    parser.set_defaults(func=target.command(run))


def run(args: argparse.Namespace) -> int:
    if args.kind and not args.crm_id:
        raise CliError("CRM_ID: is required with KIND (or give neither for a listing)")
    if args.limit < 1:
        raise CliError(f"--limit: must be 1 or more, got {args.limit}")
    api = Api(target.resolve(args))
    if args.kind:
        return _one(api, args)
    records = api.list_records(
        args.org, status=args.status_filter, kind=args.kind_filter, limit=args.limit
    )
    if args.json:
        print(dumps({"imports": records}))
        return 0
    out = output.console()
    if not records:
        out.print(f"no imports recorded for organization {args.org} with these filters")
        return 0
    table = output.table("kind", "crm_id", "status", "books_id", "updated_at", "why")
    for r in records:
        why = "" if r.get("status") == "succeeded" else output.why(r) or r.get("detail") or ""
        table.add_row(
            r.get("kind"),
            r.get("crm_id"),
            output.status_of(r),
            r.get("books_id") or "",
            r.get("updated_at"),
            why,
        )
    out.print(table)
    out.print(f"{len(records)} import(s)")
    return 0


def _one(api: Api, args: argparse.Namespace) -> int:
    answer = api.get_record(args.kind, args.crm_id, args.org)
    if answer.status == 404:
        print(answer.message)
        return 1
    if answer.status != 200 or answer.record is None:
        raise CliError(f"HTTP {answer.status}: {answer.message}")
    record = answer.record
    if args.json:
        print(dumps(record))
        return 0
    out = output.console()
    out.print(output.key(record))
    for name in FIELDS:
        value = record.get(name)
        if value not in (None, [], ""):
            shown = ", ".join(value) if isinstance(value, list) else value
            out.print(f"  {name:<16} {shown}")
    if record.get("last_error"):
        out.print(f"  {'last_error':<16} {output.why(record)}")
    if record.get("detail"):
        out.print(f"  {'detail':<16} {record['detail']}")
    if record.get("status") != "succeeded":
        out.print(f"  {'next':<16} {output.what_to_do(record)}")
    return 0
