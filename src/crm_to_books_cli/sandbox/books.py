"""Zoho Books: the CRM imports, the look-ups by CRM id, and the per-organization limits.

Import-specific error codes are not documented by Zoho; the ones below are plausible choices,
listed in docs/sandbox.md. Clients classify by HTTP status first, code second.
"""

from __future__ import annotations

import math
import re
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from crm_to_books_cli.sandbox.accounts import NOT_AUTHORIZED, AccessToken, scope_allows
from crm_to_books_cli.sandbox.config import (
    CRM_MODULES,
    KINDS,
    MISSING_CRM_ID,
    Organization,
)
from crm_to_books_cli.sandbox.state import JSON, Reply, Shared, books_error

INVALID_URL = books_error(404, 5, "Invalid URL Passed")
NO_ORGANIZATION = books_error(
    400,
    6042,
    "This user belongs to multiple organizations, hence the parameter CompanyID/CompanyName "
    "is required for associating this user to a specific organization.",
)
RATE_LIMITED = books_error(
    429, 44, "You have made too many requests per minute. Please try again after some time."
)
DAILY_LIMITED = books_error(
    429,
    45,
    "You have reached the maximum number of API requests allowed for your organization today.",
)
TOO_CONCURRENT = books_error(
    429, 1070, "You have made too many concurrent requests. Please try again after some time."
)

_IMPORT_PATH = re.compile(r"^/books/v3/crm/(?P<kind>[^/]+)/(?P<crm_id>[^/]+)/import/?$")
_READ_PATH = re.compile(r"^/books/v3/(?P<resource>contacts|items)/(?P<books_id>[^/]+)/?$")
_CRM_ID = re.compile(r"[0-9]{1,19}")
_FIRST_BOOKS_ID = 4_600_000_000_000_000_001  # 19 digits: beyond JavaScript's exact integers
# Look-up filters: the query parameter and the kind of record it matches.
_CONTACT_FILTERS = {
    "zcrm_account_id": "account",
    "zcrm_contact_id": "contact",
    "zcrm_vendor_id": "vendor",
}
_ITEM_FILTERS = {"zcrm_product_id": "item"}
_LOOKUPS = {
    "/books/v3/contacts": ("contacts", _CONTACT_FILTERS),
    "/books/v3/items": ("items", _ITEM_FILTERS),
}


@dataclass(frozen=True)
class Route:
    action: Literal["import", "lookup", "read"]
    kind: str | None  # the import's kind, or the kind a look-up filters on
    organization_id: str | None
    scope: str
    crm_id: str = ""
    list_key: str = ""
    filters: Mapping[str, str] = field(default_factory=dict)
    page: int = 1
    per_page: int = 200
    books_id: str = ""


@dataclass(eq=False)
class _Org:
    config: Organization
    window: deque[float] = field(default_factory=deque)  # admitted requests in the rate window
    day_start: float = 0.0
    day_count: int = 0
    in_flight: int = 0
    max_concurrency_seen: int = 0
    attempts: list[float] = field(default_factory=list)  # every request that reached the limiter


@dataclass(frozen=True)
class _Record:
    books_id: str
    kind: str
    crm_id: str
    name: str

    def listed(self, crm_ids: bool = True) -> JSON:
        """The record as Books lists (or, with its CRM ids, reads) it."""
        if self.kind == "item":
            if not crm_ids:
                return {"item_id": self.books_id, "name": self.name, "status": "active"}
            return {
                "item_id": self.books_id,
                "name": self.name,
                "status": "active",
                "zcrm_product_id": self.crm_id,
            }
        contact: JSON = {
            "contact_id": self.books_id,
            "contact_name": self.name,
            "company_name": "" if self.kind == "contact" else self.name,
            "contact_type": "vendor" if self.kind == "vendor" else "customer",
            "status": "active",
        }
        if crm_ids:
            for param, kind in _CONTACT_FILTERS.items():
                contact[param] = self.crm_id if kind == self.kind else ""
        return contact


def route(method: str, path: str, query: Mapping[str, str]) -> Route | Reply:
    """Which Books endpoint a request is for, from its method and URL alone."""
    organization_id = query.get("organization_id") or None
    if match := _IMPORT_PATH.match(path):
        kind = match["kind"]
        if kind not in KINDS:
            return INVALID_URL
        if method != "POST":
            return _method_not_allowed(method)
        scope = "ZohoBooks.settings.CREATE" if kind == "item" else "ZohoBooks.contacts.CREATE"
        return Route("import", kind, organization_id, scope, crm_id=match["crm_id"])
    if match := _READ_PATH.match(path):
        if method != "GET":
            return _method_not_allowed(method)
        resource = match["resource"]
        scope = "ZohoBooks.settings.READ" if resource == "items" else "ZohoBooks.contacts.READ"
        return Route(
            "read", None, organization_id, scope, list_key=resource, books_id=match["books_id"]
        )
    lookup = _LOOKUPS.get(path.rstrip("/"))
    if lookup is None:
        return INVALID_URL
    if method != "GET":
        return _method_not_allowed(method)
    list_key, known = lookup
    filters = {param: query[param] for param in known if query.get(param)}
    kinds = {known[param] for param in filters}
    try:
        page, per_page = int(query.get("page", 1)), int(query.get("per_page", 200))
    except ValueError:
        return books_error(400, 2, "Invalid value passed for page")
    scope = "ZohoBooks.settings.READ" if list_key == "items" else "ZohoBooks.contacts.READ"
    kind = kinds.pop() if len(kinds) == 1 else None
    return Route(
        "lookup",
        kind,
        organization_id,
        scope,
        list_key=list_key,
        filters=filters,
        page=max(page, 1),
        per_page=min(max(per_page, 1), 200),
    )


def _method_not_allowed(method: str) -> Reply:
    return books_error(
        405, 37, f"The HTTP method {method} is not allowed for the requested resource"
    )


class Books:
    def __init__(self, shared: Shared, crm_name: Callable[[str, str], str | None]) -> None:
        self._s = shared
        self._crm_name_of = crm_name  # the CRM record's name, None when there is no record
        now = shared.clock()
        self._orgs = {
            org.organization_id: _Org(org, day_start=now) for org in shared.config.organizations
        }
        self._records: dict[tuple[str, str, str], list[_Record]] = {}
        self._imports: Counter[tuple[str, str, str]] = Counter()
        self._requests: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._next_id = _FIRST_BOOKS_ID

    @property
    def organization_ids(self) -> list[str]:
        return list(self._orgs)

    # -- admission ---------------------------------------------------------------------------

    def authorize(self, route: Route, token: AccessToken) -> Reply | None:
        """Organization, then scope: Zoho checks who you are before what you may do."""
        if route.organization_id is None:
            return NO_ORGANIZATION
        if route.organization_id not in self._orgs:
            return books_error(
                400,
                6041,
                "This user is not associated with the CompanyID/CompanyName:"
                f"{route.organization_id}.",
            )
        if not scope_allows(token.scopes, route.scope):
            return NOT_AUTHORIZED
        return None

    def admit(self, organization_id: str) -> Reply | None:
        """Take an in-flight slot, or the 429 that refuses it. Every refusal is counted."""
        with self._s.lock:
            org = self._orgs[organization_id]
            limits = org.config
            now = self._s.clock()
            self._requests[organization_id] += 1
            org.attempts.append(now)
            org.max_concurrency_seen = max(org.max_concurrency_seen, org.in_flight + 1)
            self._slide(org, now)
            # The lasting condition first: a daily refusal tells the client to park, not retry.
            for refusal, code, exceeded in (
                (DAILY_LIMITED, "45", org.day_count >= limits.daily_limit),
                (RATE_LIMITED, "44", len(org.window) >= limits.requests_per_minute),
                (TOO_CONCURRENT, "1070", org.in_flight >= limits.max_concurrency),
            ):
                if exceeded:
                    self._refused[code] += 1
                    return refusal
            org.window.append(now)
            org.day_count += 1
            org.in_flight += 1
            return None

    def release(self, organization_id: str) -> None:
        with self._s.lock:
            self._orgs[organization_id].in_flight -= 1

    def rate_headers(self, organization_id: str | None) -> dict[str, str]:
        with self._s.lock:
            org = self._orgs.get(organization_id or "")
            if org is None:
                return {}
            now = self._s.clock()
            self._slide(org, now)
            limit = org.config.requests_per_minute
            reset = org.window[0] + self._s.config.rate_window_seconds - now if org.window else 0
            return {
                "X-Rate-Limit-Limit": str(limit),
                "X-Rate-Limit-Remaining": str(max(limit - len(org.window), 0)),
                "X-Rate-Limit-Reset": str(math.ceil(reset)),
            }

    def _slide(self, org: _Org, now: float) -> None:
        window_start = now - self._s.config.rate_window_seconds
        while org.window and org.window[0] <= window_start:
            org.window.popleft()
        day = self._s.config.day_seconds
        if now - org.day_start >= day:
            org.day_start += day * ((now - org.day_start) // day)
            org.day_count = 0

    # -- the endpoints -----------------------------------------------------------------------

    def handle(self, route: Route) -> Reply:
        """Serve a request that `authorize` and `admit` let through."""
        with self._s.lock:
            org = self._orgs[route.organization_id or ""].config
            if route.action == "import":
                return self._import(org, route.kind or "", route.crm_id)
            if route.action == "read":
                return self._read(org, route)
            return self._lookup(org, route)

    def _import(self, org: Organization, kind: str, crm_id: str) -> Reply:
        config = self._s.config
        module = CRM_MODULES[kind]
        if not _CRM_ID.fullmatch(crm_id):
            return books_error(400, 2, f"Invalid value passed for crm_{kind}_id")
        if not org.allows(kind):
            return books_error(
                400,
                3010,
                f"Zoho Books is not integrated with Zoho CRM for {module} in this organization. "
                "Enable the matching CRM sync mode and try again.",
            )
        name = self._crm_name(kind, crm_id)
        if name is None:
            return books_error(400, 1002, f"The record does not exist in Zoho CRM {module}.")
        key = (org.organization_id, kind, crm_id)
        existing = self._records.get(key)
        if existing and config.reimport == "error":
            return books_error(400, 1001, f"This {module} record has already been imported.")
        if existing and config.reimport == "return_existing":
            record = existing[0]
        else:
            record = _Record(str(self._next_id), kind, crm_id, name)
            self._next_id += 1
            self._records.setdefault(key, []).append(record)
        self._imports[key] += 1
        id_key = "item_id" if kind == "item" else config.contact_result_key
        return Reply(
            config.import_status,
            {"code": 0, "message": "success", "data": {id_key: record.books_id}},
        )

    def _read(self, org: Organization, route: Route) -> Reply:
        """One record by its Books id, with every field (its CRM ids included)."""
        _, known = _LOOKUPS[f"/books/v3/{route.list_key}"]
        kinds = set(known.values())
        for (org_id, kind, _), records in self._records.items():
            for record in records:
                if org_id == org.organization_id and kind in kinds:
                    if record.books_id == route.books_id:
                        key = "item" if route.list_key == "items" else "contact"
                        return Reply(200, {"code": 0, "message": "success", key: record.listed()})
        what = "Item" if route.list_key == "items" else "Contact"
        return books_error(404, 1002, f"{what} does not exist.")

    def _lookup(self, org: Organization, route: Route) -> Reply:
        _, known = _LOOKUPS[f"/books/v3/{route.list_key}"]
        config = self._s.config
        if route.filters and config.lookup_refuses == 400:
            param = next(iter(route.filters))
            return books_error(400, 2, f"Invalid value passed for {param}")
        if route.filters and config.lookup_refuses == 404:
            return INVALID_URL
        filters = {} if config.lookup_ignores_filter else route.filters
        keys = {(org.organization_id, known[p], value) for p, value in filters.items()}
        if keys:
            # A record has one kind and one CRM id: filters naming two can match nothing.
            found = self._records.get(keys.pop(), []) if len(keys) == 1 else []
        else:
            kinds = set(known.values())
            found = [
                record
                for (org_id, kind, _), records in self._records.items()
                if org_id == org.organization_id and kind in kinds
                for record in records
            ]
        with_ids = not config.lookup_rows_without_crm_id
        matches = [record.listed(crm_ids=with_ids) for record in found]
        start = (route.page - 1) * route.per_page
        page = matches[start : start + route.per_page]
        page_context: JSON = {
            "page": route.page,
            "per_page": route.per_page,
            "has_more_page": start + route.per_page < len(matches),
            "applied_filter": "Status.All",
            "sort_column": "created_time",
            "sort_order": "A",
        }
        return Reply(
            200,
            {"code": 0, "message": "success", route.list_key: page, "page_context": page_context},
        )

    def _crm_name(self, kind: str, crm_id: str) -> str | None:
        """The CRM record's name as Books takes it; None when the CRM has no such record (with
        `auto_create_crm_records`, any well-formed id has one, named after it)."""
        config = self._s.config
        if crm_id == MISSING_CRM_ID or crm_id in config.missing_crm_ids:
            return None
        name = self._crm_name_of(kind, crm_id)
        if name is None and config.auto_create_crm_records:
            name = f"CRM {CRM_MODULES[kind]} {crm_id}"
        return name

    # -- controls ----------------------------------------------------------------------------

    def set_limits(self, organization_id: str, **limits: int | None) -> Organization:
        with self._s.lock:
            org = self._orgs.get(organization_id)
            if org is None:
                raise KeyError(f"unknown organization {organization_id}")
            changes = {name: value for name, value in limits.items() if value is not None}
            org.config = org.config.with_changes(**changes)
            return org.config

    def reset(self) -> None:
        """Books records, counters, rate windows and daily counts back to the start."""
        with self._s.lock:
            now = self._s.clock()
            self._records.clear()
            self._imports.clear()
            self._requests.clear()
            self._refused.clear()
            for org in self._orgs.values():
                org.window.clear()
                org.attempts.clear()
                org.day_start, org.day_count = now, 0
                org.max_concurrency_seen = org.in_flight

    def max_requests_in_window(self, organization_id: str, seconds: float | None = None) -> int:
        """The most requests that reached the organization within any span of `seconds`."""
        with self._s.lock:
            times = self._orgs[organization_id].attempts
            span = self._s.config.rate_window_seconds if seconds is None else seconds
            best, first = 0, 0
            for last, at in enumerate(times):
                while at - times[first] >= span:
                    first += 1
                best = max(best, last - first + 1)
            return best

    def counters(self, window_seconds: float | None = None) -> JSON:
        with self._s.lock:
            imports: dict[str, dict[str, dict[str, int]]] = {}
            for (org_id, kind, crm_id), count in self._imports.items():
                imports.setdefault(org_id, {}).setdefault(kind, {})[crm_id] = count
            records: dict[str, dict[str, dict[str, int]]] = {}
            for (org_id, kind, crm_id), found in self._records.items():
                records.setdefault(org_id, {}).setdefault(kind, {})[crm_id] = len(found)
            orgs = self._orgs
            return {
                "books_requests": {org_id: self._requests[org_id] for org_id in orgs},
                "imports": imports,
                "books_records": records,
                "duplicates": sum(1 for found in self._records.values() if len(found) > 1),
                "responses_429": {code: self._refused[code] for code in ("44", "45", "1070")},
                "in_flight": {org_id: org.in_flight for org_id, org in orgs.items()},
                "max_concurrency_seen": {
                    org_id: org.max_concurrency_seen for org_id, org in orgs.items()
                },
                "max_requests_in_window": {
                    org_id: self.max_requests_in_window(org_id, window_seconds) for org_id in orgs
                },
                "daily_requests": {org_id: org.day_count for org_id, org in orgs.items()},
                "limits": {
                    org_id: {
                        "requests_per_minute": org.config.requests_per_minute,
                        "daily_limit": org.config.daily_limit,
                        "max_concurrency": org.config.max_concurrency,
                    }
                    for org_id, org in orgs.items()
                },
            }
