"""`crm-to-books connect --connection NAME --data-centre DC --client-id ID`: exchange a Zoho
self-client grant code for a refresh token and store it in the connection's secret.

The client secret and the grant code are read without echo (or, when stdin is not a terminal,
as two lines: the client secret, then the grant code). No secret is ever printed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from crm_to_books import topology
from crm_to_books.crm_gate import NOTIFICATIONS_SCOPE, crm_scope
from crm_to_books.entities import KINDS, get_entity
from crm_to_books.zoho import DATA_CENTRES, TokenError, ZohoClient
from crm_to_books_cli import target
from crm_to_books_cli.target import CliError, Target

# What a grant code must carry: Books imports and look-ups; CRM reads (sweeps) and notification
# channels (watch). Without the CRM scopes Books imports work and CRM triggers say what is missing.
SCOPES = (
    "ZohoBooks.contacts.CREATE",
    "ZohoBooks.settings.CREATE",
    "ZohoBooks.contacts.READ",
    "ZohoBooks.settings.READ",
    *(crm_scope(get_entity(kind).crm_module) for kind in KINDS),
    NOTIFICATIONS_SCOPE,
)

ADVICE = {
    "invalid_code": "the grant code expired (they live a few minutes) or was already used: "
    "generate a new one in the Zoho API console and run connect again",
    "invalid_client": "the client id or client secret is wrong for this data centre",
    "throttled": "Zoho is throttling token requests for this client: wait 10 minutes",
    "unavailable": "the Zoho accounts server did not answer: check the data centre and retry",
}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "connect",
        help="store a Zoho connection's refresh token (from a self-client grant code)",
        description="Prompts for the self-client's client secret and a grant code (scopes "
        f"{','.join(SCOPES)}; the ZohoCRM ones for CRM sweeps and notifications), exchanges "
        "the code at the data centre's accounts server and "
        "writes client_id, client_secret, refresh_token and accounts_url to the connection's "
        "secret. Without a terminal, reads the client secret then the grant code from stdin.",
    )
    parser.add_argument("--connection", required=True, help="the connection's name, e.g. default")
    parser.add_argument(
        "--data-centre",
        "--data-center",
        required=True,
        metavar="DC|URL",
        help=f"{', '.join(DATA_CENTRES)}, or an accounts server URL",
    )
    parser.add_argument("--client-id", required=True, help="the self-client's client id")
    target.add_arguments(parser)
    parser.set_defaults(func=target.command(run))


def accounts_url(data_centre: str) -> str:
    if data_centre in DATA_CENTRES:
        return DATA_CENTRES[data_centre][0]
    if data_centre.startswith(("https://", "http://")):
        return data_centre.rstrip("/")
    raise CliError(
        f"--data-centre: must be one of {', '.join(DATA_CENTRES)} or an accounts URL, "
        f"got {data_centre!r}"
    )


def _secrets() -> tuple[str, str]:
    if sys.stdin.isatty():
        print(f"the grant code's scopes: {','.join(SCOPES)}", file=sys.stderr)
        client_secret = getpass.getpass("client secret: ")
        code = getpass.getpass("grant code: ")
    else:
        client_secret, code = sys.stdin.readline().strip(), sys.stdin.readline().strip()
    for name, value in (("client secret", client_secret), ("grant code", code)):
        if not value:
            raise CliError(f"{name}: is required (stdin: the client secret line, then the code)")
    return client_secret.strip(), code.strip()


def run(args: argparse.Namespace) -> int:
    url = accounts_url(args.data_centre)
    client_id = args.client_id.strip()
    if not client_id:
        raise CliError("--client-id: is required")
    where = target.resolve(args)
    secret_id = where.names.connection_secret(args.connection)
    secrets = where.client("secretsmanager")
    # Check access before the exchange: a grant code works once, so fail before spending it.
    try:
        secrets.describe_secret(SecretId=secret_id)
        exists = True
    except secrets.exceptions.ResourceNotFoundException:
        exists = False
    client_secret, code = _secrets()
    try:
        refresh_token, _ = ZohoClient().exchange_grant_code(url, client_id, client_secret, code)
    except TokenError as exc:
        advice = ADVICE.get(exc.reason, exc.message)
        raise CliError(f"Zoho refused the grant code at {url} ({exc.reason}): {advice}") from None
    value = json.dumps(
        {
            "client_id": client_id,
            "client_secret": client_secret,
            "refresh_token": refresh_token,
            "accounts_url": url,
        }
    )
    if exists:
        secrets.put_secret_value(SecretId=secret_id, SecretString=value)
    else:
        secrets.create_secret(Name=secret_id, SecretString=value)
        print(
            f"note: secret {secret_id} did not exist and was created; the stack only reads the "
            "connections its configuration declares",
            file=sys.stderr,
        )
    print(
        f"connected: connection {args.connection}, data centre {args.data_centre}, "
        f"refresh token stored in secret {secret_id}"
    )
    print(resume_parked(where, args.connection))
    return 0


def resume_parked(where: Target, connection: str) -> str:
    """Have the token keeper check the connection now (it reads the new secret and clears the
    broken mark), then start the re-drive job, whose run re-enqueues every import parked on
    the connection. Without this (or locally) the two schedules do it within minutes."""
    later = (
        "imports parked on this connection resume after the token keeper's and the re-drive "
        f"job's next runs (every {topology.TOKEN_KEEPER_RATE_MINUTES} minutes)"
    )
    if where.local:
        return later
    keeper = where.names.function(topology.TOKEN_KEEPER)
    redrive = where.names.function(topology.REDRIVE)
    lambda_ = where.client("lambda")
    try:
        answer = lambda_.invoke(FunctionName=keeper, Payload=b"{}")
        result = json.loads(answer["Payload"].read() or b"{}")
        if answer.get("FunctionError"):
            return f"{later}; the token keeper {keeper} failed now: see its logs"
        checked = {str(c.get("connection")): c for c in result.get("connections", [])}
        if connection not in checked:
            return f"the stack does not use connection {connection}: its configuration lists " + (
                ", ".join(sorted(checked)) or "none"
            )
        status = str(checked[connection].get("status"))
        detail = checked[connection].get("detail")
        if status in {"broken", "throttled"}:
            until = "it works" if status == "broken" else "Zoho's token block ends"
            return (
                f"the token keeper {keeper} says the connection is {status} ({detail}): imports "
                f"parked on it stay parked until {until}"
            )
        lambda_.invoke(FunctionName=redrive, InvocationType="Event", Payload=b"{}")
    except (ValueError, AttributeError, TypeError):  # not JSON, or not the keeper's shape
        return f"{later}; the token keeper {keeper} answered something unexpected: see its logs"
    except ClientError as exc:
        return f"{later}; starting them now failed ({exc.response['Error'].get('Code')})"
    except BotoCoreError as exc:
        return f"{later}; starting them now failed ({type(exc).__name__})"
    return (
        f"the token keeper {keeper} has a usable token for it ({status}: {detail}); re-drive "
        f"job {redrive} started: imports parked on it resume now"
    )
