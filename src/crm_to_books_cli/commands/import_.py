"""`crm-to-books import KIND CRM_ID --org ORG [--async]`: one import through the HTTP API.

Exit codes: 0 imported (or already imported, or queued with --async), 1 Zoho refused it
(recorded failed), 3 not now (rate limited, or queued for retry: see Retry-After), 2 an error.
"""

from __future__ import annotations

import argparse
from typing import Any

from crm_to_books.entities import KINDS
from crm_to_books.errors import InvalidRequest
from crm_to_books.models import ImportRequest
from crm_to_books_cli import output, target
from crm_to_books_cli.api_client import Api, dumps
from crm_to_books_cli.target import CliError

EXIT_FAILED, EXIT_LATER = 1, 3


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "import",
        help="import one CRM record into Books now (or queue it with --async)",
        description="POST /v1/crm/KIND/CRM_ID/import. Exit 0 imported, 1 refused by Zoho "
        "(recorded failed), 3 rate limited or queued for retry, 2 an error.",
    )
    parser.add_argument("kind", metavar="KIND", choices=KINDS, help=", ".join(KINDS))
    parser.add_argument("crm_id", metavar="CRM_ID", help="the CRM record's id (1 to 19 digits)")
    parser.add_argument("--org", required=True, help="the Books organization_id")
    parser.add_argument(
        "--async", dest="asynchronous", action="store_true", help="queue it (202) and return"
    )
    parser.add_argument("--json", action="store_true", help="print the API's raw JSON answer")
    target.add_arguments(parser)
    parser.set_defaults(func=target.command(run))


def run(args: argparse.Namespace) -> int:
    fields = {"kind": args.kind, "organization_id": args.org, "crm_id": args.crm_id}
    try:
        request = ImportRequest.parse(**fields, source="cli")
    except InvalidRequest as exc:
        raise CliError(output.invalid(exc, fields).replace("organization_id", "--org", 1)) from None
    api = Api(target.resolve(args))
    answer = api.import_record(
        request.kind, request.crm_id, request.organization_id, asynchronous=args.asynchronous
    )
    code = _exit_code(answer.status)
    if code is None:
        raise CliError(f"HTTP {answer.status}: {answer.message}")
    if args.json:
        print(dumps(answer.body))
        return code
    out = output.console()
    record = answer.record or {}
    retry_after = answer.header("Retry-After")
    if answer.status == 200:
        out.print(f"succeeded: {output.key(record)} is {output.books_id(record)}")
    elif answer.status == 202:
        out.print(f"queued: {output.key(record)}")
        out.print(
            f"  follow it: crm-to-books status {request.kind} {request.crm_id} "
            f"--org {request.organization_id}"
        )
        return code
    elif answer.status == 422:
        out.print(f"failed: {output.key(record)}")
        out.print(f"  Zoho said: {output.why(record)}")
    else:
        what = "rate limited" if answer.status == 429 else "queued for retry"
        out.print(f"{what}: {answer.message}")
        out.print(f"  Retry-After: {retry_after or '?'} s")
    if record.get("detail") and answer.status == 503:
        out.print(f"  {record['detail']}")
    if answer.status == 422:
        out.print(f"  next: {output.what_to_do(record)}")
    return code


def _exit_code(status: int) -> int | None:
    return {200: 0, 202: 0, 422: EXIT_FAILED, 429: EXIT_LATER, 503: EXIT_LATER}.get(status)
