"""`crm-to-books failures --org ORG`: failed, parked and retrying imports, why, and what to do;
plus what waits in each kind's DLQ."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from crm_to_books.entities import KINDS
from crm_to_books_cli import output, target
from crm_to_books_cli.api_client import Api, dumps

# An attempt holds its lease for the function timeout plus 10 s (pipeline.LEASE_SECONDS); an
# import in progress for longer than this has lost its worker.
STALLED_AFTER_SECONDS = 120


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "failures",
        help="failed and parked/retrying imports: why, and what to do",
        description="The organization's failed imports, those waiting to be retried (parked, "
        "retrying, in a DLQ) and those whose worker died mid-attempt, each with Zoho's code and "
        "message and the next step; then the number of messages in each kind's DLQ.",
    )
    parser.add_argument("--org", required=True, help="the Books organization_id")
    parser.add_argument("--kind", dest="kind_filter", choices=KINDS, help="only this kind")
    parser.add_argument("--limit", type=int, default=200, help="at most N per status (200)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    target.add_arguments(parser)
    parser.set_defaults(func=target.command(run))


def run(args: argparse.Namespace) -> int:
    where = target.resolve(args)
    api = Api(where)
    records = [
        record
        for status in ("failed", "retrying", "in_progress")
        for record in api.list_records(
            args.org, status=status, kind=args.kind_filter, limit=args.limit
        )
        if status != "in_progress" or _stalled(record)
    ]
    dlq = {kind: _depth(where, kind) for kind in target.kinds(args.kind_filter)}
    if args.json:
        advice = [{**r, "next": output.what_to_do(r)} for r in records]
        print(dumps({"imports": advice, "dlq_messages": dlq}))
        return 0
    out = output.console()
    if not records:
        out.print(f"no failed or waiting imports in organization {args.org}")
    for record in records:
        out.print(f"{output.status_of(record)}: {output.key(record)}")
        if record.get("last_error"):
            out.print(f"  why:  {output.why(record)}")
        if record.get("detail") and record.get("status") != "failed":  # when, what next
            out.print(f"  said: {record['detail']}")
        out.print(f"  next: {output.what_to_do(record)}")
    waiting = {kind: n for kind, n in dlq.items() if n}
    for kind, count in waiting.items():
        out.print(
            f"{kind} DLQ: {count} message(s) waiting; after fixing the cause: "
            f"crm-to-books redrive --kind {kind}"
        )
    if not waiting:
        out.print("DLQs: empty")
    return 0


def _stalled(record: dict[str, Any]) -> bool:
    """In progress for longer than any attempt can take: its worker died (or timed out)."""
    try:
        updated = datetime.fromisoformat(str(record.get("updated_at")).replace("Z", "+00:00"))
    except ValueError:
        return False
    return (datetime.now(UTC) - updated).total_seconds() > STALLED_AFTER_SECONDS


def _depth(where: target.Target, kind: str) -> int:
    attributes = where.client("sqs").get_queue_attributes(
        QueueUrl=where.dlq_url(kind),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())
