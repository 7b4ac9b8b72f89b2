"""`crm-to-books sandbox`: run the local Zoho sandbox (Accounts, Books, CRM) in the foreground."""

from __future__ import annotations

import argparse
from typing import Any

from crm_to_books_cli.sandbox.cli import add_arguments, run


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "sandbox",
        help="run a local Zoho sandbox (Accounts, Books, CRM)",
        description="Serve a local stand-in for Zoho Accounts, Zoho Books and Zoho CRM. Prints "
        "one JSON line (url, credentials, organizations, CRM ids) and serves until SIGINT/SIGTERM.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
