"""`POST /v1/hooks/zoho-crm`: Zoho CRM's notifications become queued imports (source `crm`).

The route has no IAM auth (Zoho cannot sign requests): a notification is verified by its
channel's token, compared in constant time with the one kept in Secrets Manager for that
`channel_id` (`channels.ChannelSecrets`), and never logged. A wrong token and an unknown channel
get the same 403, so the answer does not say which channels exist; no token at all is a 401.
Nothing is queued for a refused notification. For an accepted one, `insert` and `update` of a
module the channel watches queue one import per id, and the answer (2xx) comes as soon as they
are queued: the import functions do the rest. `delete`, other operations, modules the channel
does not watch and ids that are not 1 to 19 digits are ignored and counted.

Zoho does not retry a notification, so a failure to queue answers 503 and the sweep catches the
records; a replayed notification queues again, and the ledger answers the second message
without calling Zoho.
"""

from __future__ import annotations

import hmac
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from crm_to_books.channels import ChannelSecrets
from crm_to_books.crm_queue import enqueue_all, is_crm_id
from crm_to_books.entities import ENTITIES
from crm_to_books.errors import (
    Forbidden,
    InvalidRequest,
    PayloadTooLarge,
    QueueUnavailable,
    ServiceError,
    Unauthenticated,
)
from crm_to_books.intake import Intake
from crm_to_books.models import canonical_id
from crm_to_books.observability import logger, metrics
from crm_to_books.settings import Settings
from crm_to_books.topology import (
    HOOK_MAX_BODY_BYTES,
    HOOK_MAX_IDS,
    METRIC_HOOK_IGNORED,
    METRIC_HOOK_QUEUED,
    METRIC_HOOK_REFUSED,
)

QUEUED_OPERATIONS = frozenset({"insert", "update"})
KIND_OF_MODULE = {entity.crm_module: kind for kind, entity in ENTITIES.items()}
KNOWN_SECONDS = 300.0  # a channel's secret is read again after this
UNKNOWN_SECONDS = 60.0  # an unknown channel id is not looked up again for this long


class CrmHooks:
    def __init__(
        self,
        settings: Settings,
        intake: Intake,
        secrets: ChannelSecrets | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.intake = intake
        self.secrets = secrets or ChannelSecrets(settings)
        self._clock = clock
        # channel id -> (read again after, its secret or None): Secrets Manager is asked at most
        # once a minute per channel id, whatever a caller sends.
        self._cache: dict[str, tuple[float, dict[str, Any] | None]] = {}

    def receive(
        self, body: str | bytes | None, correlation_id: str | None = None
    ) -> dict[str, Any]:
        """Verify and queue one notification; raises a ServiceError (4xx/503) otherwise."""
        try:
            notification = self._parse(body)
            channel = self._verify(notification)
        except ServiceError as exc:
            if exc.http_status < 500:
                metrics.add_metric(name=METRIC_HOOK_REFUSED, unit=MetricUnit.Count, value=1)
            raise
        return self._queue(notification, channel, correlation_id)

    def _parse(self, body: str | bytes | None) -> dict[str, Any]:
        raw = body if isinstance(body, bytes) else (body or "").encode()
        if len(raw) > HOOK_MAX_BODY_BYTES:
            raise PayloadTooLarge(f"body: at most {HOOK_MAX_BODY_BYTES} bytes")
        try:
            notification = json.loads(raw or b"null")
        except ValueError:
            raise InvalidRequest("body", "must be Zoho CRM's notification JSON") from None
        if not isinstance(notification, dict):
            raise InvalidRequest("body", "must be a JSON object")
        if not isinstance(notification.get("ids"), list):
            raise InvalidRequest("ids", "must be a list of CRM record ids")
        if len(notification["ids"]) > HOOK_MAX_IDS:
            raise InvalidRequest("ids", f"at most {HOOK_MAX_IDS} in one notification")
        return notification

    def _verify(self, notification: dict[str, Any]) -> dict[str, Any]:
        token = notification.get("token")
        if not isinstance(token, str) or not token:
            raise Unauthenticated("token: the channel's token is required")
        channel_id = str(notification.get("channel_id") or "")
        channel = self._channel(channel_id) if is_crm_id(channel_id) else None
        expected = str((channel or {}).get("token") or "")
        # Compared in constant time even for an unknown channel, so timing tells nothing.
        same = hmac.compare_digest(token.encode(), (expected or "\0" * len(token)).encode())
        if channel is None or not expected or not same:
            logger.warning("CRM notification refused", extra={"channel_id": channel_id[:40]})
            raise Forbidden("token: not a valid token for this channel")
        return channel

    def _channel(self, channel_id: str) -> dict[str, Any] | None:
        now = self._clock()
        cached = self._cache.get(channel_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        value = self.secrets.read(channel_id)
        self._cache[channel_id] = (now + (KNOWN_SECONDS if value else UNKNOWN_SECONDS), value)
        return value

    def _queue(
        self, notification: dict[str, Any], channel: dict[str, Any], correlation_id: str | None
    ) -> dict[str, Any]:
        ignored: Counter[str] = Counter()
        ids = notification["ids"]
        organization_id = str(channel.get("organization_id") or "")
        kind = KIND_OF_MODULE.get(str(notification.get("module") or ""))
        operation = str(notification.get("operation") or "")
        if organization_id not in self.settings.organizations:
            ignored["unknown_organization"] += len(ids)
        elif kind is None:
            ignored["unknown_module"] += len(ids)
        elif kind not in (channel.get("kinds") or ()):
            ignored["module_not_watched"] += len(ids)
        elif operation not in QUEUED_OPERATIONS:
            ignored["delete" if operation == "delete" else "other_operation"] += len(ids)
        wanted: list[str] = []
        if not ignored:
            for value in ids:
                crm_id = str(value) if isinstance(value, str | int) else ""
                if isinstance(value, bool) or not is_crm_id(crm_id):
                    ignored["malformed_id"] += 1
                else:
                    wanted.append(canonical_id(crm_id))
        wanted = list(dict.fromkeys(wanted))
        sent = enqueue_all(self.intake, kind or "", organization_id, wanted, "crm", correlation_id)
        failed = sum(1 for ok in sent.values() if not ok)
        queued = len(wanted) - failed
        metrics.add_metric(name=METRIC_HOOK_QUEUED, unit=MetricUnit.Count, value=queued)
        metrics.add_metric(
            name=METRIC_HOOK_IGNORED, unit=MetricUnit.Count, value=sum(ignored.values())
        )
        logger.info(
            "CRM notification",
            extra={
                "channel_id": str(notification.get("channel_id")),
                "crm_module": str(notification.get("module"))[:40],
                "operation": operation[:20],
                "queued": queued,
                "ignored": dict(ignored),
            },
        )
        if failed:
            raise QueueUnavailable(
                f"{failed} of {len(wanted)} imports could not be queued; the sweep will find them"
            )
        return {"queued": queued, "ignored": dict(ignored)}
