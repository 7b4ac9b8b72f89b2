"""Outcome events (`Import Succeeded` / `Import Failed`) on the service's bus."""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from crm_to_books.clients import LazyClient
from crm_to_books.models import ImportRecord, Status
from crm_to_books.observability import logger
from crm_to_books.topology import DETAIL_IMPORT_FAILED, DETAIL_IMPORT_SUCCEEDED, EVENT_SOURCE

_DETAIL_TYPES = {Status.SUCCEEDED: DETAIL_IMPORT_SUCCEEDED, Status.FAILED: DETAIL_IMPORT_FAILED}


class OutcomePublisher:
    def __init__(self, bus_name: str, client: Any = None) -> None:
        self._bus = bus_name
        self._client = client

    client = LazyClient("events")

    def publish(self, record: ImportRecord, correlation_id: str | None = None) -> bool:
        """Send the record's terminal outcome. The ledger is the truth: a failed publish is
        logged, never turned into a failed import."""
        detail_type = _DETAIL_TYPES.get(record.status)
        if not self._bus or detail_type is None:
            return False
        detail = {**record.public(), "correlation_id": correlation_id}
        try:
            answer = self.client.put_events(
                Entries=[
                    {
                        "Source": EVENT_SOURCE,
                        "DetailType": detail_type,
                        "Detail": json.dumps(detail),
                        "EventBusName": self._bus,
                    }
                ]
            )
        except (BotoCoreError, ClientError) as exc:
            logger.warning("outcome event not sent", extra={"error": type(exc).__name__})
            return False
        if answer.get("FailedEntryCount"):
            logger.warning("outcome event refused", extra={"entries": answer.get("Entries")})
            return False
        return True
