"""Zoho CRM records: the store (seeded samples plus records the controls create) and the Records
API `GET /crm/v8/{Module}`, as strict as Zoho documents it (zoho/crm-oas v8 `getRecords`).

Times have one-second resolution, so many records share a `Modified_Time`: the order of ties is
Zoho's business, and here it is a hash of the id, so a client cannot lean on id order either.
"""

from __future__ import annotations

import json
import re
import secrets
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from crm_to_books_cli.sandbox.config import CRM_MODULES, MISSING_CRM_ID, SEEDED_CRM_RECORDS
from crm_to_books_cli.sandbox.state import JSON, Reply, Shared

KIND_OF_MODULE = {module: kind for kind, module in CRM_MODULES.items()}
MODULES = tuple(KIND_OF_MODULE)
# Each module's standard fields (a few of Zoho's); the first is its mandatory name field.
STANDARD_FIELDS: dict[str, tuple[str, ...]] = {
    "Accounts": ("Account_Name", "Account_Type", "Industry", "Phone", "Website"),
    "Contacts": ("Last_Name", "First_Name", "Full_Name", "Email", "Phone", "Account_Name"),
    "Vendors": ("Vendor_Name", "Email", "Phone", "Category"),
    "Products": ("Product_Name", "Product_Code", "Unit_Price", "Product_Active"),
}
SYSTEM_FIELDS = ("id", "Created_Time", "Modified_Time")
SORT_FIELDS = ("id", "Created_Time", "Modified_Time")
MAX_PER_PAGE = 200
MAX_FIELDS = 50
MAX_IDS = 100
DISCRETE_LIMIT = 2000  # records reachable with `page`; past it only `page_token`
TOKEN_LIMIT = 100_000  # records reachable with consecutive page tokens
_FIRST_NEW_ID = 3_652_397_000_001_000_001
_ID = re.compile(r"[0-9]{1,19}")
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")
_SEED_AGE = 3 * 86400  # seeded records were created three days before the sandbox started


def crm_error(status: int, code: str, message: str, details: JSON | None = None) -> Reply:
    """Zoho CRM's error shape: code, details, message, status."""
    return Reply(
        status, {"code": code, "details": details or {}, "message": message, "status": "error"}
    )


def invalid(param: str, **details: Any) -> Reply:
    return crm_error(400, "INVALID_DATA", "invalid data", {"param_name": param, **details})


def module_name(module: str) -> str:
    """A CRM module name from itself or from a kind ("account" -> "Accounts")."""
    name = CRM_MODULES.get(module, module)
    if name not in KIND_OF_MODULE:
        raise ValueError(f"module must be one of {', '.join(MODULES)} (or a kind), not {module!r}")
    return name


class CrmClock:
    """The CRM's wall clock, driven by the sandbox clock so a ManualClock steps it too."""

    def __init__(self, shared: Shared, start: datetime | None, utc_offset: str) -> None:
        self._s = shared
        origin = start.timestamp() if start else datetime.now(UTC).timestamp()
        self._offset = origin - shared.clock()
        sign = -1 if utc_offset.startswith("-") else 1
        hours, minutes = utc_offset[1:].split(":")
        self.zone = timezone(sign * timedelta(hours=int(hours), minutes=int(minutes)))

    def now(self) -> float:
        return self._s.clock() + self._offset

    def second(self) -> int:
        """Now, to Zoho's one-second resolution."""
        return int(self.now())

    def iso(self, epoch: float) -> str:
        return datetime.fromtimestamp(int(epoch), self.zone).isoformat(timespec="seconds")


def parse_time(value: str) -> float | None:
    """An ISO 8601 date-time with an offset, as epoch seconds; None if it is not one."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


@dataclass(eq=False)
class CrmRecord:
    id: str
    module: str
    fields: dict[str, Any]
    created: int
    modified: int
    tie: int = 0

    def __post_init__(self) -> None:
        self.tie = zlib.crc32(self.id.encode())

    def value(self, name: str, clock: CrmClock) -> Any:
        if name == "id":
            return self.id
        if name in ("Created_Time", "Modified_Time"):
            return clock.iso(self.created if name == "Created_Time" else self.modified)
        if name == "Full_Name" and self.module == "Contacts" and "Full_Name" not in self.fields:
            parts = (self.fields.get("First_Name"), self.fields.get("Last_Name"))
            return " ".join(str(p) for p in parts if p) or None
        return self.fields.get(name)

    def name(self, clock: CrmClock) -> str:
        """What Books calls the record: its name field (a contact's full name)."""
        field_name = "Full_Name" if self.module == "Contacts" else STANDARD_FIELDS[self.module][0]
        return str(self.value(field_name, clock) or "")

    def view(self, names: Iterable[str], clock: CrmClock) -> JSON:
        return {"id": self.id, **{name: self.value(name, clock) for name in names}}

    def sort_key(self, sort_by: str) -> tuple[int, int, int]:
        primary = {"id": int(self.id), "Created_Time": self.created}.get(sort_by, self.modified)
        return (primary, 0 if sort_by == "id" else self.tie, int(self.id))


@dataclass
class _PageToken:
    bound: tuple[Any, ...]  # the query it continues: any change is TOKEN_BOUND_DATA_MISMATCH
    after: tuple[int, int, int]  # the sort key of the last record served
    page: int
    served: int
    expires_at: float


@dataclass
class ListQuery:
    module: str
    fields: tuple[str, ...]
    sort_by: str = "id"
    descending: bool = True
    per_page: int = MAX_PER_PAGE
    page: int | None = None
    page_token: str | None = None
    since: float | None = None  # If-Modified-Since
    ids: frozenset[str] | None = None
    bound: tuple[Any, ...] = field(default=())


class RecordStore:
    """Every module's records, and the Records API over them. Callers hold the shared lock."""

    def __init__(self, shared: Shared, clock: CrmClock, seed: bool) -> None:
        self._s = shared
        self.clock = clock
        self._seed = seed
        self._records: dict[str, dict[str, CrmRecord]] = {}
        self._ids: set[str] = set()  # CRM ids are unique across modules
        self._module_fields: dict[str, set[str]] = {}  # each module's fields
        self._tokens: dict[str, _PageToken] = {}
        self._next_id = _FIRST_NEW_ID
        self.reset()

    # -- the store ---------------------------------------------------------------------------

    def reset(self) -> None:
        self._records = {module: {} for module in MODULES}
        self._ids = set()
        self._module_fields = {m: {*STANDARD_FIELDS[m], *SYSTEM_FIELDS} for m in MODULES}
        self._tokens.clear()
        if not self._seed:
            return
        start = self.clock.second() - _SEED_AGE
        for kind, names in SEEDED_CRM_RECORDS.items():
            for n, (crm_id, name) in enumerate(names.items()):
                at = start + n * 3600
                module = CRM_MODULES[kind]
                self._add(CrmRecord(crm_id, module, _seed_fields(module, name, n), at, at))

    def get(self, module: str, crm_id: str) -> CrmRecord | None:
        return self._records[module].get(crm_id)

    def all(self, module: str) -> list[CrmRecord]:
        return list(self._records[module].values())

    def count(self) -> dict[str, int]:
        return {module: len(records) for module, records in self._records.items()}

    def create(self, module: str, items: Iterable[Mapping[str, Any]]) -> list[CrmRecord]:
        """New records, all in this second; an item may choose its `id`. All or nothing."""
        now = self.clock.second()
        created: list[CrmRecord] = []
        taken: set[str] = set()  # ids of this batch
        for n, item in enumerate(items):
            fields = dict(item)
            crm_id = str(fields.pop("id", "") or "")
            _check_fields(fields, f"records[{n}]")
            if crm_id:
                if not _ID.fullmatch(crm_id) or crm_id == MISSING_CRM_ID:
                    raise ValueError(f"records[{n}].id must be 1 to 19 digits (not the missing id)")
                if crm_id in taken or crm_id in self._ids:
                    raise ValueError(f"records[{n}].id {crm_id} already exists")
            else:
                while str(self._next_id) in taken or str(self._next_id) in self._ids:
                    self._next_id += 1
                crm_id = str(self._next_id)
            taken.add(crm_id)
            name_field = STANDARD_FIELDS[module][0]
            fields.setdefault(name_field, f"Sandbox {module[:-1]} {crm_id[-6:]}")
            created.append(CrmRecord(crm_id, module, fields, now, now))
        for record in created:
            self._add(record)
        return created

    def _add(self, record: CrmRecord) -> None:
        self._records[record.module][record.id] = record
        self._ids.add(record.id)
        self._module_fields[record.module].update(record.fields)

    def update(
        self, module: str, items: Iterable[Mapping[str, Any]]
    ) -> list[tuple[CrmRecord, list[str]]]:
        """Change fields of existing records (each item names its `id`); every one's
        `Modified_Time` becomes this second. All or nothing. Answers each record and the
        fields whose value changed."""
        now = self.clock.second()
        plan: list[tuple[CrmRecord, dict[str, Any]]] = []
        for n, item in enumerate(items):
            fields = dict(item)
            crm_id = str(fields.pop("id", "") or "")
            record = self._records[module].get(crm_id)
            if record is None:
                raise KeyError(f"records[{n}].id: no {module} record {crm_id or '(none given)'}")
            _check_fields(fields, f"records[{n}]")
            plan.append((record, fields))
        done: list[tuple[CrmRecord, list[str]]] = []
        for record, fields in plan:
            changed = [k for k, v in fields.items() if record.fields.get(k, None) != v]
            record.fields.update(fields)
            self._module_fields[record.module].update(fields)
            record.modified = now
            done.append((record, changed))
        return done

    def fields_of(self, module: str) -> set[str]:
        """The module's fields: standard, system, and any a record was given."""
        return self._module_fields[module]

    # -- GET /crm/v8/{Module} ----------------------------------------------------------------

    def parse(self, module: str, query: Mapping[str, str], since: str | None) -> ListQuery | Reply:
        """The request's parameters, checked in Zoho's order of mention; a Reply if refused."""
        names = self._requested(module, query)
        if isinstance(names, Reply):
            return names
        parsed = ListQuery(module, tuple(n for n in names if n != "id"))
        refusal = _order(query, parsed) or _filters(query, since, parsed) or _paging(query, parsed)
        if refusal is not None:
            return refusal
        order = "desc" if parsed.descending else "asc"
        parsed.bound = (module, names, parsed.sort_by, order, parsed.per_page, parsed.ids, since)
        return parsed

    def _requested(self, module: str, query: Mapping[str, str]) -> tuple[str, ...] | Reply:
        raw = query.get("fields", "")
        if not raw.strip():
            return crm_error(
                400, "REQUIRED_PARAM_MISSING", "required param is missing", {"param_name": "fields"}
            )
        names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
        if len(names) > MAX_FIELDS:
            details = {"limit": MAX_FIELDS, "param_name": "fields"}
            return crm_error(400, "LIMIT_EXCEEDED", "limit exceeded", details)
        known = self.fields_of(module)
        unknown = [n for n in names if n not in known]
        return invalid("fields", api_name=unknown[0]) if unknown else names

    def page(self, query: ListQuery) -> Reply:
        """One page of records, or 204/304 when none match."""
        now = self.clock.now()
        matching = [
            r
            for r in self._records[query.module].values()
            if (query.since is None or r.modified > query.since)
            and (query.ids is None or r.id in query.ids)
        ]
        matching.sort(key=lambda r: r.sort_key(query.sort_by), reverse=query.descending)
        if query.page_token is not None:
            state = self._tokens.get(query.page_token)
            if state is None or state.bound != query.bound:
                return crm_error(
                    400,
                    "TOKEN_BOUND_DATA_MISMATCH",
                    "The page_token given seems to be invalid or input param is added or "
                    "altered or deleted",
                    {"param_name": "page_token"},
                )
            if state.expires_at <= now:
                return crm_error(
                    400,
                    "EXPIRED_VALUE",
                    "Page token expired",
                    {"api_name": "page_token", "json_path": "$.query.page_token"},
                )
            if state.served >= TOKEN_LIMIT:
                return crm_error(
                    400,
                    "PAGINATION_LIMIT_EXCEEDED",
                    "You can only get upto 100000 records using page_token param",
                    {"param_name": "page_token"},
                )
            # A cursor, not an offset: records changed since move past it and come again.
            rest = [r for r in matching if _beyond(r.sort_key(query.sort_by), state, query)]
            page_records, page, served = rest[: query.per_page], state.page, state.served
            more = len(rest) > query.per_page
        else:
            page = query.page or 1
            start = (page - 1) * query.per_page
            page_records = matching[start : start + query.per_page]
            served, more = start, len(matching) > start + query.per_page
        if not page_records:
            status = 204 if query.since is None else self._s.config.crm.not_modified_status
            return Reply(status, "")
        info: JSON = {
            "call": False,
            "per_page": query.per_page,
            "count": len(page_records),
            "page": page,
            "sort_by": query.sort_by,
            "sort_order": "desc" if query.descending else "asc",
            "more_records": more,
            "email": False,
            "next_page_token": None,
            "previous_page_token": None,
            "page_token_expiry": None,
        }
        if more:
            token, expiry = self._issue(query, page_records[-1], page + 1, served, now)
            info["next_page_token"], info["page_token_expiry"] = token, self.clock.iso(expiry)
        data = [r.view(query.fields, self.clock) for r in page_records]
        return Reply(200, {"data": data, "info": info})

    def one(self, module: str, crm_id: str, query: Mapping[str, str]) -> Reply:
        """`GET /crm/v8/{Module}/{id}`: every field unless `fields` names some; 204 if none."""
        record = self._records[module].get(crm_id)
        names = [n.strip() for n in query.get("fields", "").split(",") if n.strip()]
        unknown = [n for n in names if n not in self.fields_of(module)]
        if unknown:
            return invalid("fields", api_name=unknown[0])
        if record is None:
            return Reply(204, "")
        if not names:
            names = sorted({*STANDARD_FIELDS[module], *record.fields, *SYSTEM_FIELDS[1:]})
        return Reply(200, {"data": [record.view(names, self.clock)]})

    def _issue(
        self, query: ListQuery, last: CrmRecord, page: int, served: int, now: float
    ) -> tuple[str, float]:
        for stale in [t for t, s in self._tokens.items() if s.expires_at <= now]:
            del self._tokens[stale]
        expires_at = now + self._s.config.crm.page_token_lifetime_seconds
        token = secrets.token_hex(24)
        after = last.sort_key(query.sort_by)
        self._tokens[token] = _PageToken(
            query.bound, after, page, served + query.per_page, expires_at
        )
        return token, expires_at


def _order(query: Mapping[str, str], parsed: ListQuery) -> Reply | None:
    sort_by = query.get("sort_by", "id")
    if sort_by not in SORT_FIELDS:
        return invalid("sort_by", supported_values=list(SORT_FIELDS))
    sort_order = query.get("sort_order", "desc")
    if sort_order not in ("asc", "desc"):
        return invalid("sort_order", supported_values=["asc", "desc"])
    parsed.sort_by, parsed.descending = sort_by, sort_order == "desc"
    return None


def _filters(query: Mapping[str, str], since: str | None, parsed: ListQuery) -> Reply | None:
    if "ids" in query:
        ids = [i.strip() for i in query["ids"].split(",")]
        if len(ids) > MAX_IDS or not all(_ID.fullmatch(i) for i in ids):
            return invalid("ids")
        parsed.ids = frozenset(ids)
    if since is not None:
        parsed.since = parse_time(since)
        if parsed.since is None:
            details: JSON = {"header_name": "If-Modified-Since"}
            return crm_error(400, "INVALID_DATA", "invalid data", details)
    return None


def _paging(query: Mapping[str, str], parsed: ListQuery) -> Reply | None:
    per_page = _positive(query.get("per_page", str(MAX_PER_PAGE)))
    if per_page is None or per_page > MAX_PER_PAGE:
        return invalid("per_page", maximum=MAX_PER_PAGE)
    parsed.per_page = per_page
    parsed.page_token = query.get("page_token")
    if parsed.page_token is not None:
        if "page" in query:  # Zoho: page_token cannot be used with page
            ambiguous = [{"param_name": "page"}, {"param_name": "page_token"}]
            return crm_error(
                400,
                "AMBIGUITY_DURING_PROCESSING",
                "AMBIGUITY_DURING_PROCESSING",
                {"ambiguity_due_to": ambiguous},
            )
        return None
    page = _positive(query.get("page", "1"))
    if page is None:
        return invalid("page")
    if page * per_page > DISCRETE_LIMIT:
        return crm_error(
            400,
            "DISCRETE_PAGINATION_LIMIT_EXCEEDED",
            "You can only get the first 2000 records without using page_token param",
            {"limit": DISCRETE_LIMIT},
        )
    parsed.page = page
    return None


def _beyond(key: tuple[int, int, int], state: _PageToken, query: ListQuery) -> bool:
    return key < state.after if query.descending else key > state.after


def _positive(value: str) -> int | None:
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number >= 1 else None


def _check_fields(fields: Mapping[str, Any], where: str) -> None:
    for name, value in fields.items():
        if name in SYSTEM_FIELDS:
            raise ValueError(f"{where}.{name} is set by the CRM, not by the caller")
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"{where}: {name!r} is not a field API name")
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}.{name} must be a JSON value") from None


def _seed_fields(module: str, name: str, n: int) -> dict[str, Any]:
    if module == "Accounts":
        return {"Account_Name": name, "Account_Type": ("Customer", "Reseller", "Prospect")[n % 3]}
    if module == "Contacts":
        first, _, last = name.partition(" ")
        return {"First_Name": first, "Last_Name": last, "Email": f"{first.lower()}@example.com"}
    if module == "Vendors":
        return {"Vendor_Name": name, "Category": "Supplies"}
    return {"Product_Name": name, "Product_Code": f"SKU-{n + 1:04d}", "Product_Active": True}
