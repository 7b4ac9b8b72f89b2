"""Zoho CRM in the sandbox: `sb.crm`. Serves `/crm/v8/...` on the sandbox's port (the same
`api_domain` as Books), with its own limits (API credits in a rolling window, calls in flight),
separate from Books'; and the controls tests use to create and change records.

A CRM request is checked in this order; the first refusal answers: URL (404) -> authentication
(401) -> module and method (400) -> scope (401) -> credits, then concurrency (429) -> injected
faults -> the request's own parameters (400) -> the answer.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from crm_to_books_cli.sandbox.accounts import AccessToken
from crm_to_books_cli.sandbox.config import CRM_MODULES
from crm_to_books_cli.sandbox.crm_config import CRM_RUNTIME_SETTINGS, CrmFaults, CrmSettings
from crm_to_books_cli.sandbox.crm_records import (
    MODULES,
    CrmClock,
    CrmRecord,
    RecordStore,
    crm_error,
    module_name,
)
from crm_to_books_cli.sandbox.state import JSON, Reply, Shared
from crm_to_books_cli.sandbox.watch import Watch

Authenticate = Callable[[str | None], AccessToken | Reply]
Area = Literal["records", "watch"]

INVALID_URL = crm_error(
    404, "INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one"
)
INVALID_METHOD = crm_error(
    400, "INVALID_REQUEST_METHOD", "The http request method type is not a valid one"
)
AUTHENTICATION_FAILURE = crm_error(401, "AUTHENTICATION_FAILURE", "Authentication failed")
INVALID_TOKEN = crm_error(401, "INVALID_TOKEN", "invalid oauth token")
SCOPE_MISMATCH = crm_error(401, "OAUTH_SCOPE_MISMATCH", "Unauthorized")
INTERNAL_ERROR = crm_error(500, "INTERNAL_ERROR", "Internal Server Error")
_429_MESSAGES = {
    "credits": "You have exceeded the API credits allowed for your organization in 24 hours.",
    "concurrency": "You have exceeded the number of concurrent API calls allowed.",
    "injected": "Too many requests. Please try again later.",
}
_PATH = re.compile(r"^/crm/v8/(?P<module>[^/]+)(?:/(?P<crm_id>[^/]+))?/?$")
_WATCH_PATH = "/crm/v8/actions/watch"
# The operations each watch method accepts in `ZohoCRM.notifications.{op}` (Zoho's docs).
_WATCH_OPS = {
    "GET": ("all", "read"),
    "POST": ("all", "create", "write"),
    "PUT": ("all", "update", "write"),
    "PATCH": ("all", "update", "write"),
    "DELETE": ("all", "delete"),
}


@dataclass(frozen=True)
class CrmRoute:
    area: Area
    method: str
    scopes: frozenset[str]  # any one of them will do (lower case)
    module: str = ""
    crm_id: str | None = None


def route(method: str, path: str) -> CrmRoute | Reply:
    if path.rstrip("/") == _WATCH_PATH:
        ops = _WATCH_OPS.get(method)
        if ops is None:
            return INVALID_METHOD
        return CrmRoute("watch", method, frozenset(f"zohocrm.notifications.{op}" for op in ops))
    match = _PATH.match(path)
    if match is None:
        return INVALID_URL
    module = match["module"]
    if module not in MODULES:
        return crm_error(
            400,
            "INVALID_MODULE",
            "the module name given seems to be invalid",
            {"resource_path_index": 0},
        )
    if method != "GET":  # this CRM is written through the controls, not the API
        return INVALID_METHOD
    lower = module.lower()
    scopes = frozenset(
        {
            "zohocrm.modules.all",
            "zohocrm.modules.read",
            f"zohocrm.modules.{lower}.all",
            f"zohocrm.modules.{lower}.read",
        }
    )
    return CrmRoute("records", method, scopes, module, match["crm_id"])


class _Faults:
    """The CRM's fault knobs: `*_next` exact, `*_rate` drawn from the seeded generator."""

    NAMES = ("fail_429", "fail_500", "drop_notifications")

    def __init__(self, shared: Shared, faults: CrmFaults) -> None:
        self._s = shared
        self.sent: Counter[str] = Counter()
        self._wake = threading.Event()
        self.set(faults)

    def set(self, faults: CrmFaults) -> None:
        with self._s.lock:
            self.knobs = faults
            self._remaining = {name: getattr(faults, f"{name}_next") for name in self.NAMES}
            self._rng = random.Random(faults.seed)
            self._wake.set()  # requests held by latency go now
            self._wake = threading.Event()

    def applies(self, area: Area) -> bool:
        return self.knobs.scope in ("crm", area)

    def take(self, name: str) -> bool:
        with self._s.lock:
            if self._remaining[name] > 0:
                self._remaining[name] -= 1
                return True
            rate: float = getattr(self.knobs, f"{name}_rate")
            return rate > 0 and self._rng.random() < rate

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)

    def release_all(self) -> None:
        self._wake.set()

    def snapshot(self) -> JSON:
        with self._s.lock:
            return {
                **self.knobs.model_dump(mode="json"),
                "remaining": {f"{name}_next": n for name, n in self._remaining.items()},
            }


class Crm:
    """The sandbox's Zoho CRM: records, the Records and Notification APIs, limits, controls."""

    def __init__(self, shared: Shared, authenticate: Authenticate) -> None:
        settings = shared.config.crm
        self._s = shared
        self._authenticate = authenticate
        self.clock = CrmClock(shared, settings.start_time, settings.utc_offset)
        self._store = RecordStore(shared, self.clock, settings.seed_records)
        self._faults = _Faults(shared, settings.faults)
        self._watch = Watch(shared, self.clock, lambda: self._faults.take("drop_notifications"))
        self._credits: deque[float] = deque()  # when each credit in the window was spent
        self._counts: Counter[str] = Counter()
        self._in_flight = 0
        self._max_in_flight = 0

    @property
    def settings(self) -> CrmSettings:
        return self._s.config.crm

    # -- HTTP --------------------------------------------------------------------------------

    def serve(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        body: bytes,
        authorization: str | None,
        if_modified_since: str | None,
    ) -> Reply:
        routed = route(method, path)
        if routed is not INVALID_URL:
            routed = self._authorized(authorization, routed)
        if isinstance(routed, Reply):
            return routed
        refusal = self._admit(routed.area)
        if refusal is not None:
            return refusal
        try:
            faulty = self._faults.applies(routed.area)
            if faulty:
                self._faults.wait(self._faults.knobs.latency_seconds)
                if self._faults.take("fail_500"):
                    with self._s.lock:
                        self._faults.sent["errors_5xx"] += 1
                    return INTERNAL_ERROR
            with self._s.lock:
                return self._handle(routed, query, body, if_modified_since)
        finally:
            with self._s.lock:
                self._in_flight -= 1

    def _authorized(self, authorization: str | None, routed: CrmRoute | Reply) -> CrmRoute | Reply:
        """Who you are (401), then what you ask for (400), then whether you may (401)."""
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() != "zoho-oauthtoken" or not value.strip():
            return AUTHENTICATION_FAILURE
        token = self._authenticate(authorization)
        if isinstance(token, Reply):
            return INVALID_TOKEN
        if isinstance(routed, Reply):
            return routed
        granted = {scope.lower() for scope in token.scopes}
        return routed if granted & routed.scopes else SCOPE_MISMATCH

    def _admit(self, area: Area) -> Reply | None:
        """Spend a credit and take a slot, or the 429 that refuses them (which costs nothing)."""
        settings = self.settings
        with self._s.lock:
            now = self._s.clock()
            self._counts["requests"] += 1
            self._counts[f"requests_{area}"] += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight + 1)
            self._slide(now)
            reason = None
            if len(self._credits) >= settings.credits_per_day:
                reason = "credits"
            elif self._in_flight >= settings.max_concurrency:
                reason = "concurrency"
            elif self._faults.applies(area) and self._faults.take("fail_429"):
                reason = "injected"
            if reason is not None:
                self._counts[f"429_{reason}"] += 1
                return crm_error(429, "TOO_MANY_REQUESTS", _429_MESSAGES[reason])
            self._credits.append(now)
            self._counts["credits_used"] += 1
            self._in_flight += 1
            return None

    def _slide(self, now: float) -> None:
        window_start = now - self.settings.credit_window_seconds
        while self._credits and self._credits[0] <= window_start:
            self._credits.popleft()

    def _handle(
        self, routed: CrmRoute, query: Mapping[str, str], body: bytes, since: str | None
    ) -> Reply:
        if routed.area == "records":
            if routed.crm_id is not None:
                return self._store.one(routed.module, routed.crm_id, query)
            parsed = self._store.parse(routed.module, query, since)
            return parsed if isinstance(parsed, Reply) else self._store.page(parsed)
        if routed.method == "GET":
            return self._watch.get(query)
        if routed.method == "DELETE":
            return self._watch.disable(query)
        try:
            document = json.loads(body or b"null")
        except ValueError:
            return crm_error(400, "INVALID_DATA", "invalid data", {"expected_data_type": "json"})
        action = {"POST": self._watch.enable, "PUT": self._watch.replace}
        return action.get(routed.method, self._watch.patch)(document)

    # -- for Books ---------------------------------------------------------------------------

    def name_of(self, kind: str, crm_id: str) -> str | None:
        """The name of the CRM record `crm_id` of `kind`, or None when there is none."""
        with self._s.lock:
            record = self._store.get(CRM_MODULES[kind], crm_id)
            return record.name(self.clock) if record is not None else None

    # -- controls ----------------------------------------------------------------------------

    def create_records(self, module: str, records: Iterable[Mapping[str, Any]]) -> list[JSON]:
        """Create records (each a mapping of field API names to values; `id` optional) in one
        go, with this second's `Created_Time`; channels watching `Module.create` are notified."""
        name = module_name(module)
        with self._s.lock:
            created = self._store.create(name, records)
            self._watch.notify(name, "create", [(record, []) for record in created])
            return [self._full(record) for record in created]

    def create_record(self, module: str, **fields: Any) -> JSON:
        return self.create_records(module, [fields])[0]

    def update_records(self, module: str, records: Iterable[Mapping[str, Any]]) -> list[JSON]:
        """Change records (each names its `id`): `Modified_Time` becomes this second and
        channels watching `Module.edit` are notified with the fields that changed."""
        name = module_name(module)
        with self._s.lock:
            updated = self._store.update(name, records)
            self._watch.notify(name, "edit", updated)
            return [self._full(record) for record, _ in updated]

    def update_record(self, module: str, crm_id: str, **fields: Any) -> JSON:
        return self.update_records(module, [{**fields, "id": crm_id}])[0]

    def records(self, module: str) -> list[JSON]:
        name = module_name(module)
        with self._s.lock:
            return [self._full(record) for record in self._store.all(name)]

    def record(self, module: str, crm_id: str) -> JSON | None:
        name = module_name(module)
        with self._s.lock:
            record = self._store.get(name, crm_id)
            return self._full(record) if record is not None else None

    def set_faults(self, **knobs: Any) -> CrmFaults:
        """Replace every CRM fault knob (those not given go back to none)."""
        faults = CrmFaults.model_validate(knobs)
        self._faults.set(faults)
        return faults

    def clear_faults(self) -> None:
        self._faults.set(CrmFaults())

    def fault_state(self) -> JSON:
        return self._faults.snapshot()

    def configure(self, **settings: Any) -> CrmSettings:
        """Change the CRM's limits and timings at run time (not its seeds, clock or faults)."""
        refused = set(settings) - CRM_RUNTIME_SETTINGS
        if refused:
            raise ValueError(f"not changeable at run time: {', '.join(sorted(refused))}")
        with self._s.lock:
            crm = self.settings.with_changes(**settings)
            self._s.config = self._s.config.with_changes(crm=crm)
            return crm

    def channels(self) -> list[JSON]:
        """Active channels, one entry per watched module; tokens are never shown."""
        with self._s.lock:
            return [sub.safe(self.clock) for sub in self._watch.active()]

    def notifications(self) -> list[JSON]:
        """The latest notifications (at most 1,000): where to, which ids, and what became of
        them ("delivered", "failed", "dropped"). Tokens are never shown."""
        with self._s.lock:
            return list(self._watch.log)

    def wait_for_notifications(self, timeout: float = 5.0) -> None:
        """Block until every notification queued so far was delivered or failed."""
        self._watch.wait_idle(timeout)

    def counters(self) -> JSON:
        with self._s.lock:
            self._slide(self._s.clock())
            counts, settings = self._counts, self.settings
            notified = self._watch.counts
            return {
                "requests": counts["requests"],
                "requests_by_api": {
                    area: counts[f"requests_{area}"] for area in ("records", "watch")
                },
                "credits_used": counts["credits_used"],
                "credits_in_window": len(self._credits),
                "responses_429": {r: counts[f"429_{r}"] for r in _429_MESSAGES},
                "errors_5xx": self._faults.sent["errors_5xx"],
                "in_flight": self._in_flight,
                "max_concurrency_seen": self._max_in_flight,
                "limits": {
                    "credits_per_day": settings.credits_per_day,
                    "max_concurrency": settings.max_concurrency,
                },
                "records": self._store.count(),
                "channels": len(self._watch.active()),
                "notifications": {
                    n: notified[n]
                    for n in ("sent", "delivered", "failed", "dropped", "undelivered")
                },
            }

    def reset(self) -> None:
        """Records back to the seeds; channels, page tokens, counters and the credit window
        cleared. Fault knobs and settings stay."""
        with self._s.lock:
            self._store.reset()
            self._watch.reset()
            self._credits.clear()
            self._counts.clear()
            self._faults.sent.clear()
            self._max_in_flight = self._in_flight

    def stop(self) -> None:
        self._faults.release_all()
        self._watch.stop()

    def _full(self, record: CrmRecord) -> JSON:
        names = sorted({*record.fields, "Created_Time", "Modified_Time"})
        if record.module == "Contacts":
            names.append("Full_Name")
        return record.view(names, self.clock)
