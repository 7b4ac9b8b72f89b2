"""How the operator commands show import records: what happened, why, and what to do next.

Advice is chosen by the record's fields (status, `last_error.category`, `parked`, `in_dlq`),
never by matching Zoho's message text.
"""

from __future__ import annotations

import os
import re
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from crm_to_books.entities import get_entity
from crm_to_books.errors import InvalidRequest

PIPED_WIDTH = 160
NO_WRAP = {"kind", "crm_id", "books_id", "organization", "status", "outcome", "line", "updated_at"}
# ConnectionBroken's message names the connection (`Zoho connection 'NAME' needs attention`):
# only read to fill in the command to run, never to decide what happened.
_CONNECTION = re.compile(r"connection '([^']+)'")
# What `connect` needs besides the connection (and the target options, as every command).
CONNECT_FLAGS = "--data-centre DC --client-id CLIENT_ID"


def console(stderr: bool = False) -> Console:
    """Built per call, so output follows sys.stdout/sys.stderr as they are now. Piped output
    (no terminal, no COLUMNS) gets wide lines rather than rich's 80 columns: ids never wrap."""
    out = Console(stderr=stderr, highlight=False, markup=False, soft_wrap=True)
    if not out.is_terminal and not os.environ.get("COLUMNS"):
        out.width = PIPED_WIDTH
    return out


def table(*columns: str, title: str | None = None) -> Table:
    """A table whose id-like columns never wrap or truncate (ids are up to 19 digits)."""
    out = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for name in columns:
        keep = name in NO_WRAP
        out.add_column(name, no_wrap=keep, overflow="fold", min_width=19 if "id" in name else None)
    return out


def invalid(exc: InvalidRequest, fields: dict[str, str]) -> str:
    """The field, the reason and the value it got (ids are not secret)."""
    value = fields.get(exc.field)
    shown = value if value is None or len(value) <= 40 else value[:39] + "…"
    return exc.message if not value or "got " in exc.reason else f"{exc.message}, got {shown!r}"


def key(record: dict[str, Any]) -> str:
    kind, crm_id, org = (record.get(k) for k in ("kind", "crm_id", "organization_id"))
    return f"{kind} {crm_id} in organization {org}"


def books_id(record: dict[str, Any]) -> str:
    entity = get_entity(str(record.get("kind")))
    return f"{entity.books_id_key} {record.get('books_id')}"


def status_of(record: dict[str, Any]) -> str:
    """`succeeded`, `failed`, `parked`, `retrying`, ... plus `(in DLQ)` when it is there."""
    status = str(record.get("status"))
    if status != "retrying":  # `in_dlq` outlives a later attempt: it only counts while retrying
        return status
    return ("parked" if record.get("parked") else status) + (
        " (in DLQ)" if record.get("in_dlq") else ""
    )


def why(record: dict[str, Any]) -> str:
    """Zoho's code and message (or the service's reason) for the last failure."""
    error = record.get("last_error") or {}
    if not error:
        return ""
    said = [f"Zoho code {error['zoho_code']}"] if error.get("zoho_code") is not None else []
    if error.get("http_status") is not None:
        said.append(f"HTTP {error['http_status']}")
    prefix = f"{', '.join(said)}: " if said else ""
    return f"{prefix}{str(error.get('message', '')).rstrip(' .')} [{error.get('category', '?')}]"


def import_command(record: dict[str, Any]) -> str:
    return (
        f"crm-to-books import {record.get('kind')} {record.get('crm_id')} "
        f"--org {record.get('organization_id')}"
    )


def what_to_do(record: dict[str, Any]) -> str:
    error = record.get("last_error") or {}
    category = error.get("category")
    status = record.get("status")
    if status == "succeeded":
        return "nothing: imported"
    if category == "connection_broken":
        found = _CONNECTION.search(str(error.get("message", "")))
        name = found.group(1) if found else "NAME"
        return (
            f"reconnect: crm-to-books connect --connection {name} {CONNECT_FLAGS} (parked "
            "imports then resume by themselves)"
        )
    redrive = f"crm-to-books redrive --kind {record.get('kind')}"
    if status == "retrying" and record.get("in_dlq"):
        return f"fix the cause, then: {redrive}"
    if status == "in_progress":
        return (
            "its attempt stopped without a result (the worker died or timed out); the queue "
            f"retries it, or if its message reached the DLQ: {redrive}"
        )
    if status == "failed":
        if category == "auth":
            scope = get_entity(str(record.get("kind"))).scope
            return (
                f"reconnect with a grant code that has {scope} and access to the organization: "
                f"crm-to-books connect --connection NAME {CONNECT_FLAGS}; then: "
                + import_command(record)
            )
        if category == "invalid":
            return "fix the sender (the request was malformed); then: " + import_command(record)
        return (
            "fix the cause in Zoho (the CRM record, or Books' CRM sync mode for this kind), "
            "then: " + import_command(record)
        )
    when = record.get("next_attempt_at")
    then = f" at {when}" if when else ""
    if category == "rate_limited":
        return (
            f"nothing: it waits for the organization's Zoho limit and resumes by itself{then}; "
            "if this recurs, lower the organization's limits (docs/operations.md#zoho-throttled)"
        )
    if status in {"retrying", "queued"}:
        return f"nothing yet: the service retries it by itself{then}"
    return "see docs/operations.md"
