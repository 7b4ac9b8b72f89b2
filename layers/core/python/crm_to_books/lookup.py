"""Is a CRM record already in Books? Answered only when Books' own fields prove it.

After an unknown outcome the engine may import again only if this says `absent`. So a match
must be proven (the Books record's CRM id field equals the requested id and its kind fits:
a vendor is not a customer), and absence too (Books applied the filter: no row proven to be
another record is taken as this one, and a list with more pages is not read as complete).
List rows that lack a proving field are read one by one (`GET /contacts/{id}`), a few at most.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from crm_to_books.entities import Entity
from crm_to_books.zoho import Category, ZohoAnswer

MAX_READS = 3  # single-record reads per look-up; more unproven rows: Books ignored the filter

Call = Callable[[Literal["list", "read"], str], ZohoAnswer]  # (what, crm id or Books id)


@dataclass(frozen=True, slots=True)
class Found:
    books_id: str
    duplicates: int = 0  # more Books records proven to carry this CRM id


@dataclass(frozen=True, slots=True)
class Absent:
    pass


@dataclass(frozen=True, slots=True)
class Unprovable:
    """Books answered, but its answer proves neither presence nor absence."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A call of the look-up did not answer (its category says why)."""

    answer: ZohoAnswer


Result = Found | Absent | Unprovable | Refused


def look_up(entity: Entity, crm_id: str, call: Call) -> Result:
    listed = call("list", crm_id)
    if listed.category is not Category.SUCCESS:
        return Refused(listed)
    rows = listed.data.get(entity.books_resource)
    if not isinstance(rows, list):
        return Unprovable(f"Books' answer has no `{entity.books_resource}` list")
    sorted_rows = _sort(entity, rows, crm_id)
    if isinstance(sorted_rows, Unprovable):
        return sorted_rows
    proven, unknown = sorted_rows
    if not proven:
        read = _read_unknown(entity, crm_id, unknown, call)
        if not isinstance(read, list):
            return read
        proven = read
    if proven:
        return Found(proven[0], duplicates=len(proven) - 1)
    page_context = listed.data.get("page_context")
    if isinstance(page_context, dict) and page_context.get("has_more_page"):
        return Unprovable("Books answered more than one page for a filter on one CRM id")
    return Absent()


def _sort(entity: Entity, rows: list[Any], crm_id: str) -> tuple[list[str], list[str]] | Unprovable:
    """Books ids of rows proven to be the record, and of rows that do not show it either way."""
    proven: list[str] = []
    unknown: list[str] = []
    for row in rows:
        verdict = entity.match(row, crm_id)
        books_id = _books_id(entity, row)
        if verdict == "match" and books_id:
            proven.append(books_id)
        elif verdict == "unknown":
            if not books_id:
                return Unprovable("a listed record has neither the CRM id field nor a Books id")
            unknown.append(books_id)
    if not proven and len(unknown) > MAX_READS:
        return Unprovable(
            f"Books listed {len(unknown)} records without `{entity.crm_id_field}` for a filter "
            "that should match one at most"
        )
    return proven, unknown


def _read_unknown(
    entity: Entity, crm_id: str, unknown: list[str], call: Call
) -> list[str] | Unprovable | Refused:
    """Read each unproven row alone: the ones proven to be the record."""
    proven: list[str] = []
    for books_id in unknown:
        read = call("read", books_id)
        if read.category is not Category.SUCCESS:
            return Refused(read)
        verdict = entity.match(read.data.get(entity.books_record_key), crm_id)
        if verdict == "match":
            proven.append(books_id)
        elif verdict == "unknown":
            return Unprovable(
                f"Books record {books_id} does not show `{entity.crm_id_field}` even when read "
                "alone"
            )
    return proven


def _books_id(entity: Entity, row: Any) -> str | None:
    if not isinstance(row, dict):
        return None
    value = row.get(entity.books_id_key)
    return str(value) if value not in (None, "") else None
