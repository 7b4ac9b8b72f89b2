"""`crm-to-books watch enable|status|disable --org ORG`: Zoho CRM notification channels, run by
the stack's sweep function (which also renews them on a schedule). A channel posts each created
or changed record of the watched modules to the stack's `POST /v1/hooks/zoho-crm`."""

from __future__ import annotations

import argparse
from typing import Any

from crm_to_books import topology
from crm_to_books.entities import KINDS
from crm_to_books_cli import output, target
from crm_to_books_cli.api_client import dumps
from crm_to_books_cli.commands.sync import refused
from crm_to_books_cli.target import CliError, Target

READ_TIMEOUT = 120.0  # enabling may sweep nothing, but waits for Zoho (and its back-off)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="Zoho CRM notification channels: enable, status, disable",
        description="Notifications bring new and changed CRM records to Books within seconds; "
        "a configured sync catches what they miss. Channels live at most a day at Zoho: the "
        "stack renews them every 30 minutes and re-enables (and sweeps the gap of) one that "
        "lapsed.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    enable = actions.add_parser("enable", help="enable (or replace) the organization's channel")
    enable.add_argument("--org", required=True, help="the Books organization_id")
    enable.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated kinds to watch (default {','.join(KINDS)})",
    )
    enable.add_argument(
        "--notify-url",
        help=f"where Zoho posts (default: the stack's API URL + {topology.HOOK_PATH})",
    )
    status = actions.add_parser("status", help="the channels and when they expire")
    status.add_argument("--org", help="one organization (default: all)")
    disable = actions.add_parser("disable", help="disable the organization's channel")
    disable.add_argument("--org", required=True, help="the Books organization_id")
    for sub in (enable, status, disable):
        sub.add_argument("--json", action="store_true", help="print JSON")
        target.add_arguments(sub)
        sub.set_defaults(func=target.command(run))


def notify_url(where: Target, given: str | None) -> str:
    if given:
        return given
    if not where.api_url:
        raise CliError("--notify-url: required when the target has no API URL (pass --api-url)")
    return f"{where.api_url.rstrip('/')}{topology.HOOK_PATH}"


def run(args: argparse.Namespace) -> int:
    where = target.resolve(args)
    event: dict[str, Any] = {"action": f"watch_{args.action}"}
    if args.org:
        event["organization_id"] = args.org
    if args.action == "enable":
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise CliError(f"--kinds: give one or more of {', '.join(KINDS)}, got {args.kinds!r}")
        event |= {"kinds": kinds, "notify_url": notify_url(where, args.notify_url)}
    function = where.names.function(topology.SWEEP)
    answer = where.invoke(function, event, read_timeout=READ_TIMEOUT)
    key = "channels" if args.action == "status" else "channel"
    if not isinstance(answer, dict) or "error" in answer:
        refused(answer, key)
    found = answer.get(key)
    if args.json:
        print(dumps({key: found}))
        return 0
    out = output.console()
    if args.action == "disable":
        out.print(
            f"channel {found['channel_id']} disabled"
            if found
            else f"no active channel for {args.org}"
        )
        return 0
    channels = found if isinstance(found, list) else [found]
    if not channels:
        out.print("no channels")
        return 0
    table = output.table("organization", "channel", "kinds", "state", "expires", "notify url")
    for c in channels:
        table.add_row(
            c["organization_id"],
            c["channel_id"],
            ",".join(c["kinds"]),
            c["state"] + (" (gap to sweep)" if c.get("pending_gap") else ""),
            c["expires_at"],
            c["notify_url"],
        )
    out.print(table)
    return 0
