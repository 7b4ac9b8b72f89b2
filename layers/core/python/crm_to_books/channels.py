"""Zoho CRM notification channels: one per organization, watching the CRM modules of the kinds
it imports, posting to the service's `POST /v1/hooks/zoho-crm`.

Who owns what:
- Zoho holds the channel (`/crm/v8/actions/watch`) for at most a day; it answers the expiry it
  granted (one hour when it did not take the one asked for), and that answer is what counts.
- The state table's `channel#{organization}` is the registry: channel id, kinds, notify URL,
  expiry, and gaps still to sweep.
- Secrets Manager holds each channel's token (`{channel_secret_prefix}{channel_id}`, with the
  organization and kinds the hook needs), written before Zoho is asked, so the first
  notification already verifies. Tokens never reach a log line, an answer or the registry.

The renewal job (a schedule) extends each channel well before it ends. A channel that lapsed
(the job did not run in time, or Zoho dropped it) is enabled again under the same id and token,
and the records changed in the gap are swept (`Sweeper.run(since=...)`, without touching the
sync's checkpoint); a gap too long for one run is continued by the next.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from botocore.exceptions import ClientError

from crm_to_books import dynamo
from crm_to_books.clients import LazyClient
from crm_to_books.crm_gate import NOTIFICATIONS_SCOPE, CrmGate, CrmProblem
from crm_to_books.entities import KINDS, get_entity
from crm_to_books.errors import ConfigurationError, InvalidRequest
from crm_to_books.ledger import iso
from crm_to_books.observability import logger
from crm_to_books.settings import Settings
from crm_to_books.sweep import Sweeper
from crm_to_books.zoho import AccessToken, CrmAnswer, ZohoClient

LIFETIME_SECONDS = 86_400 - 600  # asked for: a day (Zoho's most), less a margin for clocks
RENEW_AHEAD_SECONDS = 6 * 3600  # renewed when it has less left: a dozen renewal runs to do it
GAP_MARGIN_SECONDS = 60  # a lapsed channel's gap is swept from a little before it lapsed
MAX_NOTIFY_URL = 255  # Zoho's limit
TOKEN_LENGTH = 48  # Zoho takes at most 50 characters


class ChannelSecrets:
    """Each channel's token, organization and kinds, in Secrets Manager."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self._settings = settings
        self._client = client

    client = LazyClient("secretsmanager")

    def name(self, channel_id: str) -> str:
        if not self._settings.channel_secret_prefix:
            raise ConfigurationError("CHANNEL_SECRET_PREFIX: required for CRM channels")
        return f"{self._settings.channel_secret_prefix}{channel_id}"

    def create(self, channel_id: str, value: Mapping[str, Any]) -> None:
        self.client.create_secret(
            Name=self.name(channel_id),
            SecretString=json.dumps(dict(value)),
            Description="crm-to-books: a Zoho CRM notification channel's token",
        )

    def read(self, channel_id: str) -> dict[str, Any] | None:
        """The channel's secret, or None when there is none (an unknown channel)."""
        try:
            answer = self.client.get_secret_value(SecretId=self.name(channel_id))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            # A deleted secret answers InvalidRequestException while marked for deletion.
            if code in {"ResourceNotFoundException", "InvalidRequestException"}:
                return None
            raise
        value = json.loads(answer.get("SecretString") or "{}")
        return value if isinstance(value, dict) else None

    def delete(self, channel_id: str) -> None:
        try:
            self.client.delete_secret(
                SecretId=self.name(channel_id), ForceDeleteWithoutRecovery=True
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise


@dataclass
class Channel:
    organization_id: str
    channel_id: str
    kinds: tuple[str, ...]
    notify_url: str
    connection: str
    expires_at: float
    status: str = "active"  # or disabled
    enabled_at: float = 0.0
    confirmed_at: float = 0.0  # Zoho last said the channel is live (enable or renewal)
    lapses: int = 0
    pending_gap: dict[str, float] = field(default_factory=dict)  # kind -> sweep from

    def state(self, now: float) -> str:
        if self.status != "active":
            return self.status
        return "active" if self.expires_at > now else "lapsed"

    def public(self, now: float) -> dict[str, Any]:
        return {
            "organization_id": self.organization_id,
            "channel_id": self.channel_id,
            "kinds": list(self.kinds),
            "modules": [get_entity(k).crm_module for k in self.kinds],
            "notify_url": without_query(self.notify_url),
            "state": self.state(now),
            "expires_at": iso(self.expires_at),
            "expires_in_seconds": max(int(self.expires_at - now), 0),
            "lapses": self.lapses,
            "pending_gap": {k: iso(v) for k, v in self.pending_gap.items()},
        }


class ChannelRegistry:
    """`channel#{organization}` items of the state table."""

    def __init__(self, settings: Settings, client: Any = None) -> None:
        self._settings = settings
        self._client = client

    client = LazyClient("dynamodb")

    def get(self, organization_id: str) -> Channel | None:
        answer = self.client.get_item(
            TableName=self._settings.state_table,
            Key={"pk": {"S": f"channel#{organization_id}"}},
            ConsistentRead=True,
        )
        item = dynamo.load(answer.get("Item"))
        if not item:
            return None
        item.pop("pk", None)
        item["kinds"] = tuple(item.get("kinds") or ())
        item["pending_gap"] = {k: float(v) for k, v in (item.get("pending_gap") or {}).items()}
        return Channel(**{k: v for k, v in item.items() if k in Channel.__dataclass_fields__})

    def put(self, channel: Channel) -> None:
        item = {"pk": f"channel#{channel.organization_id}", **asdict(channel)}
        item["kinds"] = list(channel.kinds)
        self.client.put_item(TableName=self._settings.state_table, Item=dynamo.dump(item))


class Channels:
    def __init__(
        self,
        settings: Settings,
        *,
        gate: CrmGate,
        zoho: ZohoClient,
        sweeper: Sweeper,
        registry: ChannelRegistry | None = None,
        tokens: ChannelSecrets | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.gate = gate
        self.zoho = zoho
        self.sweeper = sweeper
        self.registry = registry or ChannelRegistry(settings)
        self.secrets = tokens or ChannelSecrets(settings)
        self._clock = clock

    # --- the operator's commands ------------------------------------------------------------
    def enable(
        self, organization_id: str, kinds: Iterable[str], notify_url: str, deadline: float
    ) -> dict[str, Any]:
        """A new channel for the organization (an existing one is disabled first)."""
        org = self.settings.organization(organization_id)
        wanted = _kinds(kinds)
        url = _notify_url(notify_url)
        old = self.registry.get(organization_id)
        if old is not None and old.status == "active":
            self._drop(old, deadline)
        channel_id = str(secrets.randbelow(9 * 10**17) + 10**17)  # Zoho: a long
        token = secrets.token_urlsafe(TOKEN_LENGTH)[:TOKEN_LENGTH]
        self.secrets.create(
            channel_id, {"token": token, "organization_id": organization_id, "kinds": wanted}
        )
        now = self._clock()
        channel = Channel(
            organization_id, channel_id, wanted, url, org.connection, now, enabled_at=now
        )
        try:
            channel.expires_at = self._subscribe(channel, token, "POST", deadline)
        except Exception:
            self.secrets.delete(channel_id)
            raise
        channel.confirmed_at = self._clock()
        self.registry.put(channel)
        logger.info("CRM channel enabled", extra=channel.public(self._clock()))
        return channel.public(self._clock())

    def status(self, organization_id: str | None = None) -> list[dict[str, Any]]:
        now = self._clock()
        orgs = [organization_id] if organization_id else sorted(self.settings.organizations)
        found = [self.registry.get(org) for org in orgs]
        return [channel.public(now) for channel in found if channel is not None]

    def disable(self, organization_id: str, deadline: float) -> dict[str, Any] | None:
        self.settings.organization(organization_id)
        channel = self.registry.get(organization_id)
        if channel is None or channel.status != "active":
            return None
        self._drop(channel, deadline)
        logger.info("CRM channel disabled", extra=channel.public(self._clock()))
        return channel.public(self._clock())

    # --- the renewal job --------------------------------------------------------------------
    def renew(self, deadline: float) -> list[dict[str, Any]]:
        """Each active channel: left alone, renewed, or (lapsed) enabled again and its gap
        swept. One organization's problem does not stop the others'."""
        results = []
        for organization_id in sorted(self.settings.organizations):
            channel = self.registry.get(organization_id)
            if channel is None or channel.status != "active":
                continue
            try:
                outcome = self._renew(channel, deadline)
            except CrmProblem as exc:
                outcome = {"outcome": "failed", "reason": exc.reason, "message": exc.message}
            results.append(
                {**outcome, "organization_id": organization_id, "channel_id": channel.channel_id}
            )
        return results

    def _renew(self, channel: Channel, deadline: float) -> dict[str, Any]:
        now = self._clock()
        lapsed_at: float | None = None
        outcome = "fresh"
        if channel.expires_at - now <= RENEW_AHEAD_SECONDS:
            if channel.expires_at > now + 10:
                try:
                    channel.expires_at = self._subscribe(channel, None, "PATCH", deadline)
                    outcome = "renewed"
                except CrmProblem as exc:
                    if exc.reason != "refused":
                        raise
                    # Zoho no longer has it: gone since it was last known live.
                    lapsed_at = channel.confirmed_at or channel.enabled_at
            else:
                lapsed_at = channel.expires_at
        if lapsed_at is not None:
            secret = self.secrets.read(channel.channel_id)
            if secret is None or not secret.get("token"):
                raise CrmProblem("refused", "the channel's token secret is gone: enable it anew")
            channel.expires_at = self._subscribe(channel, str(secret["token"]), "POST", deadline)
            channel.lapses += 1
            outcome = "re-enabled"
            for kind in channel.kinds:
                since = lapsed_at - GAP_MARGIN_SECONDS
                channel.pending_gap[kind] = min(channel.pending_gap.get(kind, since), since)
            logger.warning(
                "CRM channel had lapsed: enabled again; sweeping the gap",
                extra={"organization_id": channel.organization_id, "lapsed_at": iso(lapsed_at)},
            )
        if outcome != "fresh":
            channel.confirmed_at = self._clock()
        gaps = self._sweep_gaps(channel, deadline)
        self.registry.put(channel)
        return {"outcome": outcome, "expires_at": iso(channel.expires_at), "gap_sweeps": gaps}

    def _sweep_gaps(self, channel: Channel, deadline: float) -> list[dict[str, Any]]:
        swept = []
        for kind, since in sorted(channel.pending_gap.items()):
            time_left = deadline - self._clock()
            if time_left <= 0:
                break
            result = self.sweeper.run(
                self.settings.sync(channel.organization_id, kind),
                since=datetime.fromtimestamp(since, UTC),
                time_limit=time_left,
            )
            swept.append(result.as_dict())
            if result.complete:
                del channel.pending_gap[kind]
            elif result.checkpoint:  # continued from where it got, by the next run
                channel.pending_gap[kind] = datetime.fromisoformat(result.checkpoint).timestamp()
        return swept

    # --- Zoho ---------------------------------------------------------------------------------
    def _subscribe(
        self, channel: Channel, token: str | None, method: str, deadline: float
    ) -> float:
        """POST (enable, with the token) or PATCH (extend) the channel; the expiry Zoho granted."""
        spec: dict[str, Any] = {
            "channel_id": int(channel.channel_id),
            "events": [
                f"{get_entity(kind).crm_module}.{op}"
                for kind in channel.kinds
                for op in ("create", "edit")
            ],
            "notify_url": channel.notify_url,
            "channel_expiry": _zoho_time(self._clock() + LIFETIME_SECONDS),
        }
        if token is not None:
            spec["token"] = token
            spec["notify_on_related_action"] = False

        def call(access: AccessToken) -> CrmAnswer:
            return self.zoho.crm_watch(access, method, channels=[spec])

        answer = self.gate.call(channel.connection, NOTIFICATIONS_SCOPE, call, deadline)
        entries = [e for e in answer.body.get("watch") or [] if isinstance(e, dict)]
        refused = [e for e in entries if e.get("status") != "success"]
        if answer.http_status not in (200, 201) or refused or not entries:
            first = refused[0] if refused else answer.body
            raise CrmProblem(
                "refused",
                f"Zoho CRM refused the channel ({method}): HTTP {answer.http_status} "
                f"{first.get('code') or answer.code} {first.get('message') or answer.message} "
                f"{json.dumps(first.get('details') or {})}".strip(),
            )
        granted = [
            _epoch(event.get("channel_expiry"))
            for entry in entries
            for event in (entry.get("details") or {}).get("events") or []
        ]
        known = [g for g in granted if g is not None]
        # No expiry in the answer: Zoho's default, one hour.
        return min(known) if known else self._clock() + 3600

    def _drop(self, channel: Channel, deadline: float) -> None:
        """Disable at Zoho (a lapsed one is already gone), forget its token, mark disabled."""

        def call(access: AccessToken) -> CrmAnswer:
            return self.zoho.crm_watch(access, "DELETE", params={"channel_ids": channel.channel_id})

        if channel.expires_at > self._clock():
            answer = self.gate.call(channel.connection, NOTIFICATIONS_SCOPE, call, deadline)
            if answer.http_status not in (200, 207, 400):  # 400: Zoho no longer has it
                raise CrmProblem(
                    "refused",
                    f"Zoho CRM refused to disable the channel: HTTP {answer.http_status} "
                    f"{answer.code} {answer.message}",
                )
        self.secrets.delete(channel.channel_id)
        channel.status = "disabled"
        self.registry.put(channel)


def without_query(url: str) -> str:
    """A notify URL as shown: its query string may carry something private."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(k.strip() for k in kinds if k.strip()))
    unknown = [k for k in wanted if k not in KINDS]
    if unknown or not wanted:
        raise InvalidRequest("kinds", f"give one or more of {', '.join(KINDS)}, got {unknown}")
    return wanted


def _notify_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidRequest("notify_url", f"must be an http(s) URL, got {url[:80]!r}")
    if len(url) > MAX_NOTIFY_URL:
        raise InvalidRequest("notify_url", f"Zoho takes at most {MAX_NOTIFY_URL} characters")
    return url


def _zoho_time(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), UTC).isoformat(timespec="seconds")


def _epoch(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo else None
