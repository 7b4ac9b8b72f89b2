"""Zoho CRM's Notification API (`/crm/v8/actions/watch`) and the notifications it sends.

A channel is subscribed per module (Zoho answers one entry per module a channel watches). On each
record change the sandbox POSTs Zoho's notification JSON to every matching, unexpired channel's
notify URL from one background thread. Like Zoho it never retries: a delivery that fails (no
answer within `notify_timeout_seconds`, a connection error, a non-2xx answer) is counted, and
that is all. Channel tokens are secrets: no log, counter or control answer holds one.
"""

from __future__ import annotations

import ipaddress
import queue
import threading
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests

from crm_to_books_cli.sandbox.crm_records import (
    MODULES,
    CrmClock,
    CrmRecord,
    crm_error,
    parse_time,
)
from crm_to_books_cli.sandbox.state import JSON, Reply, Shared

MAX_CHANNELS_PER_REQUEST = 50
MAX_TOKEN_LENGTH = 50
MAX_IDS_PER_NOTIFICATION = 100
OPERATIONS = {"create": "insert", "edit": "update", "delete": "delete"}
_OPS = frozenset({"create", "edit", "delete"})
# Each module's id, as Zoho reports it in resource_id.
RESOURCE_IDS = {
    "Accounts": "3652397000000002177",
    "Contacts": "3652397000000002179",
    "Vendors": "3652397000000002183",
    "Products": "3652397000000002185",
}
_ALLOWED_KEYS = frozenset(
    {
        "channel_id",
        "events",
        "notify_url",
        "token",
        "channel_expiry",
        "notify_on_related_action",
        "return_affected_field_values",
        "_delete",
    }
)
_LOOPBACK_NAMES = frozenset({"localhost"})
_MANDATORY = ("channel_id", "events", "notify_url")
_SUBSCRIBED = "Successfully subscribed for actions-watch of the given module"


@dataclass(frozen=True)
class Subscription:
    """One channel's watch on one module."""

    channel_id: str
    module: str
    ops: frozenset[str]
    notify_url: str
    token: str | None = field(repr=False)
    expires_at: float  # the CRM wall clock
    notify_on_related_action: bool = True
    return_affected_field_values: bool = False

    def listed(self, api_domain: str, clock: CrmClock) -> JSON:
        """As `GET /actions/watch` lists it (the token included: it is the owner's data)."""
        return {
            "notify_on_related_action": self.notify_on_related_action,
            "channel_expiry": clock.iso(self.expires_at),
            "return_affected_field_values": self.return_affected_field_values,
            **self.resource(api_domain),
            "notify_url": self.notify_url,
            "resource_name": self.module,
            "fields": None,
            "notification_condition": None,
            "channel_id": self.channel_id,
            "events": sorted(f"{self.module}.{op}" for op in self.ops),
            "token": self.token,
        }

    def resource(self, api_domain: str) -> JSON:
        return {
            "resource_uri": f"{api_domain}/crm/v8/{self.module}",
            "resource_id": RESOURCE_IDS[self.module],
        }

    def safe(self, clock: CrmClock) -> JSON:
        """For the control API: no token, no query string (a notify URL may carry secrets)."""
        return {
            "channel_id": self.channel_id,
            "module": self.module,
            "events": sorted(f"{self.module}.{op}" for op in self.ops),
            "notify_url": _without_query(self.notify_url),
            "channel_expiry": clock.iso(self.expires_at),
            "has_token": self.token is not None,
            "return_affected_field_values": self.return_affected_field_values,
        }


class _Refused(Exception):
    """One watch item refused: becomes one error entry of Zoho's `watch` array."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.details = code, details

    def entry(self, index: int) -> JSON:
        details = dict(self.details)
        if "api_name" in details:
            details["json_path"] = f"$.watch[{index}].{details['api_name']}"
        return {"code": self.code, "details": details, "message": str(self), "status": "error"}


@dataclass(frozen=True)
class _Delivery:
    url: str
    payload: JSON
    channel_id: str
    module: str


class Watch:
    """The channels, the Notification API over them, and the delivery thread."""

    def __init__(self, shared: Shared, clock: CrmClock, drop: Callable[[], bool]) -> None:
        self._s = shared
        self._clock = clock
        self._drop = drop
        self._subs: dict[tuple[str, str], Subscription] = {}
        self._queue: queue.Queue[_Delivery | None] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition(shared.lock)
        self._thread: threading.Thread | None = None
        self._session = requests.Session()
        self.counts: Counter[str] = Counter()
        self.log: deque[JSON] = deque(maxlen=1000)

    # -- the API (callers hold the shared lock) ----------------------------------------------

    def get(self, query: Mapping[str, str]) -> Reply:
        now = self._clock.now()
        subs = [
            s
            for s in sorted(self._subs.values(), key=lambda s: (s.channel_id, s.module))
            if s.expires_at > now
            and query.get("module", s.module) == s.module
            and query.get("channel_id", s.channel_id) == s.channel_id
        ]
        per_page = min(max(_int(query.get("per_page"), 200), 1), 200)
        page = max(_int(query.get("page"), 1), 1)
        shown = subs[(page - 1) * per_page : page * per_page]
        if not shown:
            return Reply(204, "")
        info = {
            "per_page": per_page,
            "count": len(shown),
            "page": page,
            "more_records": len(subs) > page * per_page,
        }
        return Reply(
            200, {"watch": [s.listed(self._s.url, self._clock) for s in shown], "info": info}
        )

    def enable(self, body: object) -> Reply:
        """POST: subscribe (or subscribe again: a channel's watch on a module is replaced)."""
        return self._each(body, self._enable, 201, _SUBSCRIBED)

    def replace(self, body: object) -> Reply:
        """PUT: the channel becomes exactly what is given; the rest of it is removed."""
        return self._each(body, self._replace, 200, _SUBSCRIBED)

    def patch(self, body: object) -> Reply:
        """PATCH: what is given changes, the rest stays; `_delete: true` unwatches the events."""
        if isinstance(body, dict) and "watch" not in body:
            body = {"watch": [body]}  # v8's OAS sends one flat object; the HTML docs an array
        return self._each(body, self._patch, 200, "Successfully updated the subscribe details")

    def disable(self, query: Mapping[str, str]) -> Reply:
        raw = query.get("channel_ids", "")
        ids = [i.strip() for i in raw.split(",") if i.strip()]
        if not ids:
            return crm_error(
                400,
                "REQUIRED_PARAM_MISSING",
                "required param is missing",
                {"param_name": "channel_ids"},
            )
        now = self._clock.now()
        entries: list[JSON] = []
        failed = 0
        for channel_id in dict.fromkeys(ids):
            subs = [
                s for s in self._subs.values() if s.channel_id == channel_id and s.expires_at > now
            ]
            if not subs:
                failed += 1
                refused = _Refused(
                    "INVALID_DATA", "invalid data", param_name="channel_ids", channel_id=channel_id
                )
                entries.append(refused.entry(0))
            for sub in subs:
                del self._subs[(sub.channel_id, sub.module)]
                entries.append(
                    {
                        "code": "SUCCESS",
                        "details": {**sub.resource(self._s.url), "channel_id": sub.channel_id},
                        "message": "Successfully un-subscribed from actions-watch",
                        "status": "success",
                    }
                )
        return Reply(_status(failed, len(entries), 200), {"watch": entries})

    def active(self) -> list[Subscription]:
        now = self._clock.now()
        return [s for s in self._subs.values() if s.expires_at > now]

    def reset(self) -> None:
        self._subs.clear()
        self.counts.clear()
        self.log.clear()

    # -- one watch item at a time ------------------------------------------------------------

    def _each(
        self,
        body: object,
        handle: Callable[[Mapping[str, Any]], list[Subscription]],
        ok: int,
        message: str,
    ) -> Reply:
        items = body.get("watch") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items:
            return crm_error(
                400, "MANDATORY_NOT_FOUND", "required field not found", {"api_name": "watch"}
            )
        if len(items) > MAX_CHANNELS_PER_REQUEST:
            return crm_error(
                400,
                "LIMIT_EXCEEDED",
                "limit exceeded",
                {"api_name": "watch", "limit": MAX_CHANNELS_PER_REQUEST},
            )
        entries: list[JSON] = []
        failed = 0
        for index, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise _Refused(
                        "INVALID_DATA",
                        "invalid data",
                        api_name="watch",
                        expected_data_type="jsonobject",
                    )
                subs = handle(item)
            except _Refused as refused:
                failed += 1
                entries.append(refused.entry(index))
                continue
            events = [
                {
                    "channel_expiry": self._clock.iso(s.expires_at),
                    **s.resource(self._s.url),
                    "resource_name": s.module,
                    "channel_id": s.channel_id,
                }
                for s in subs
            ]
            entries.append(
                {
                    "code": "SUCCESS",
                    "details": {"events": events},
                    "message": message,
                    "status": "success",
                }
            )
        return Reply(_status(failed, len(entries), ok), {"watch": entries})

    def _enable(self, item: Mapping[str, Any]) -> list[Subscription]:
        spec = self._parse(item, require=_MANDATORY)
        return [self._subscribe(spec, module, ops) for module, ops in spec["events"].items()]

    def _replace(self, item: Mapping[str, Any]) -> list[Subscription]:
        spec = self._parse(item, require=_MANDATORY)
        self._existing(spec["channel_id"])
        for key in [k for k in self._subs if k[0] == spec["channel_id"]]:
            del self._subs[key]
        return [self._subscribe(spec, module, ops) for module, ops in spec["events"].items()]

    def _patch(self, item: Mapping[str, Any]) -> list[Subscription]:
        spec = self._parse(item, require=_MANDATORY, patch=True)
        current = self._existing(spec["channel_id"])
        changes = {
            key: spec[key]
            for key in (
                "notify_url",
                "token",
                "expires_at",
                "notify_on_related_action",
                "return_affected_field_values",
            )
            if key in spec
        }
        updated = {s.module: replace(s, **changes) for s in current}
        unwatch = item.get("_delete") is True
        for module, ops in spec["events"].items():
            before = updated.get(module)
            if before is None:
                if not unwatch:
                    updated[module] = self._subscription(spec, module, ops)
            else:
                updated[module] = replace(before, ops=before.ops - ops if unwatch else ops)
        for module, sub in updated.items():
            if sub.ops:
                self._subs[(sub.channel_id, module)] = sub
            else:  # nothing left to watch in this module
                self._subs.pop((sub.channel_id, module), None)
        return [sub for sub in updated.values() if sub.ops]

    def _existing(self, channel_id: str) -> list[Subscription]:
        now = self._clock.now()
        subs = [s for s in self._subs.values() if s.channel_id == channel_id and s.expires_at > now]
        if not subs:  # unknown or lapsed: enable it again with POST
            raise _Refused("INVALID_DATA", "invalid data", api_name="channel_id")
        return subs

    def _subscribe(self, spec: Mapping[str, Any], module: str, ops: frozenset[str]) -> Subscription:
        sub = self._subscription(spec, module, ops)
        self._subs[(sub.channel_id, module)] = sub
        return sub

    def _subscription(
        self, spec: Mapping[str, Any], module: str, ops: frozenset[str]
    ) -> Subscription:
        return Subscription(
            channel_id=spec["channel_id"],
            module=module,
            ops=ops,
            notify_url=spec["notify_url"],
            token=spec.get("token"),
            expires_at=spec.get("expires_at", self._default_expiry()),
            notify_on_related_action=spec.get("notify_on_related_action", True),
            return_affected_field_values=spec.get("return_affected_field_values", False),
        )

    def _default_expiry(self) -> float:
        return self._clock.second() + self._s.config.crm.channel_default_seconds

    def _parse(
        self, item: Mapping[str, Any], require: Sequence[str], patch: bool = False
    ) -> dict[str, Any]:
        """A watch item, checked; any fault is a _Refused naming the key."""
        for key in item:
            if key not in _ALLOWED_KEYS or (key == "_delete" and not patch):
                raise _Refused("INVALID_DATA", "invalid data", api_name=key)  # not modelled here
        for key in require:
            if item.get(key) in (None, "", []):
                raise _Refused("MANDATORY_NOT_FOUND", "required field not found", api_name=key)
        spec: dict[str, Any] = {
            "channel_id": _channel_id(item["channel_id"]),
            "events": _events(item["events"]),
            "notify_url": _notify_url(item["notify_url"]),
        }
        if "token" in item:
            spec["token"] = _token(item["token"])
        if "channel_expiry" in item:
            spec["expires_at"] = self._expiry(item["channel_expiry"])
        elif not patch:
            spec["expires_at"] = self._default_expiry()
        for key in ("notify_on_related_action", "return_affected_field_values", "_delete"):
            if key in item and not isinstance(item[key], bool):
                raise _Refused(
                    "INVALID_DATA", "invalid data", api_name=key, expected_data_type="boolean"
                )
            if key in item and key != "_delete":
                spec[key] = item[key]
        return spec

    def _expiry(self, value: object) -> float:
        """Zoho: at most `channel_max_seconds` ahead; later (or none) silently means one hour."""
        at = parse_time(value) if isinstance(value, str) else None
        now = self._clock.second()
        if at is None or at <= now:
            raise _Refused("INVALID_DATA", "invalid data", api_name="channel_expiry")
        if at - now > self._s.config.crm.channel_max_seconds:
            return self._default_expiry()
        return float(int(at))

    # -- notifications -----------------------------------------------------------------------

    def notify(self, module: str, op: str, changes: Sequence[tuple[CrmRecord, list[str]]]) -> None:
        """Queue Zoho's notification of `changes` for every matching unexpired channel.
        Caller holds the shared lock."""
        if not changes:
            return
        now = self._clock.now()
        for sub in [
            s
            for s in self._subs.values()
            if s.module == module and op in s.ops and s.expires_at > now
        ]:
            for start in range(0, len(changes), MAX_IDS_PER_NOTIFICATION):
                batch = changes[start : start + MAX_IDS_PER_NOTIFICATION]
                if self._drop():  # Zoho does not promise delivery: a sweep must catch these
                    self.counts["dropped"] += 1
                    ids = [record.id for record, _ in batch]
                    self._log(
                        sub.channel_id, module, OPERATIONS[op], ids, sub.notify_url, "dropped"
                    )
                    continue
                payload = self._payload(sub, op, batch, now)
                self._enqueue(_Delivery(sub.notify_url, payload, sub.channel_id, module))

    def _payload(
        self, sub: Subscription, op: str, batch: Sequence[tuple[CrmRecord, list[str]]], now: float
    ) -> JSON:
        payload: JSON = {
            "server_time": int(now * 1000),
            "query_params": dict(parse_qsl(urlsplit(sub.notify_url).query, keep_blank_values=True)),
            "module": sub.module,
            "resource_uri": f"{self._s.url}/crm/v8/{sub.module}",
            "ids": [record.id for record, _ in batch],
            "affected_fields": [] if op == "create" else [{r.id: fields} for r, fields in batch],
            "operation": OPERATIONS[op],
            "channel_id": sub.channel_id,
            "token": sub.token,
        }
        if sub.return_affected_field_values and op != "create":
            payload["affected_values"] = [
                {"record_id": r.id, "values": {f: r.value(f, self._clock) for f in fields}}
                for r, fields in batch
            ]
        return payload

    def _enqueue(self, delivery: _Delivery) -> None:
        self._pending += 1
        self.counts["sent"] += 1
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._deliver_all, name="zoho-sandbox-notify", daemon=True
            )
            self._thread.start()
        self._queue.put(delivery)

    def _deliver_all(self) -> None:
        while (delivery := self._queue.get()) is not None:
            status: int | None = None
            error: str | None = None
            try:
                answer = self._session.post(
                    delivery.url,
                    json=delivery.payload,
                    timeout=self._s.config.crm.notify_timeout_seconds,
                )
                status = answer.status_code
                outcome = "delivered" if 200 <= status < 300 else "failed"
            except requests.RequestException as exc:
                outcome, error = "failed", type(exc).__name__
            with self._s.lock:
                self.counts[outcome] += 1
                payload = delivery.payload
                self._log(
                    delivery.channel_id,
                    delivery.module,
                    str(payload["operation"]),
                    payload["ids"],
                    delivery.url,
                    outcome,
                    status,
                    error,
                )
                self._pending -= 1
                self._idle.notify_all()

    def _log(
        self,
        channel_id: str,
        module: str,
        operation: str,
        ids: object,
        url: str,
        outcome: str,
        status: int | None = None,
        error: str | None = None,
    ) -> None:
        self.log.append(
            {
                "channel_id": channel_id,
                "module": module,
                "operation": operation,
                "ids": ids,
                "notify_url": _without_query(url),
                "outcome": outcome,
                "status": status,
                "error": error,
            }
        )

    def wait_idle(self, timeout: float) -> None:
        """Block until every queued notification was delivered or failed."""
        with self._idle:
            if not self._idle.wait_for(lambda: self._pending == 0, timeout):
                raise TimeoutError(
                    f"{self._pending} notification(s) still in flight after {timeout} s"
                )

    def stop(self) -> None:
        """End the delivery thread; notifications still queued are never sent (counted)."""
        thread, self._thread = self._thread, None
        while True:
            try:
                undelivered = self._queue.get_nowait()
            except queue.Empty:
                break
            if undelivered is not None:
                with self._s.lock:
                    self.counts["undelivered"] += 1
                    self._pending -= 1
                    self._idle.notify_all()
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=self._s.config.crm.notify_timeout_seconds + 5)
        self._session.close()


def _status(failed: int, total: int, ok: int) -> int:
    if failed == 0:
        return ok
    return 400 if failed == total else 207


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _channel_id(value: object) -> str:
    """Zoho: a long. A JSON number or a string of digits, within 64 bits."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not text.isdigit() or not 0 < int(text) < 2**63:
        raise _Refused(
            "INVALID_DATA", "invalid data", api_name="channel_id", expected_data_type="long"
        )
    return str(int(text))


def _events(value: object) -> dict[str, frozenset[str]]:
    """`["Accounts.create", "Contacts.all", ...]` as {module: operations}."""
    if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
        raise _Refused(
            "INVALID_DATA", "invalid data", api_name="events", expected_data_type="jsonarray"
        )
    events: dict[str, set[str]] = {}
    for event in value:
        module, _, op = event.partition(".")
        if module not in MODULES or op not in (*_OPS, "all"):
            raise _Refused("INVALID_DATA", "invalid data", api_name="events")
        events.setdefault(module, set()).update(_OPS if op == "all" else {op})
    return {module: frozenset(ops) for module, ops in events.items()}


def _notify_url(value: object) -> str:
    """An http(s) URL; the sandbox only ever calls this machine (tests must not reach out)."""
    parts = urlsplit(value) if isinstance(value, str) and len(value) <= 255 else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Refused("INVALID_DATA", "invalid data", api_name="notify_url")
    host = parts.hostname
    try:
        loopback = host in _LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise _Refused("INVALID_DATA", "the sandbox notifies 127.0.0.1 only", api_name="notify_url")
    return str(value)


def _token(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TOKEN_LENGTH:
        raise _Refused(
            "INVALID_DATA", "invalid data", api_name="token", maximum_length=MAX_TOKEN_LENGTH
        )
    return value


def _without_query(url: str) -> str:
    return urlsplit(url)._replace(query="", fragment="").geturl()
