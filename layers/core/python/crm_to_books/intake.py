"""Intake: requests accepted for later (async HTTP, the re-drive job, a synchronous caller's
retry) become queue messages; requests that can never succeed are recorded as refused.

A message is the owner of a `queued` or `retrying` record until a function takes it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from crm_to_books.errors import ConfigurationError
from crm_to_books.ledger import Ledger
from crm_to_books.models import ImportRecord, ImportRequest, Status
from crm_to_books.settings import Settings

SQS_MAX_DELAY_SECONDS = 900


class Intake:
    def __init__(self, settings: Settings, ledger: Ledger, sqs: Any = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self._sqs = sqs

    @property
    def sqs(self) -> Any:
        if self._sqs is None:
            from crm_to_books import aws

            self._sqs = aws.client("sqs")
        return self._sqs

    def accept(self, request: ImportRequest) -> ImportRecord:
        """Async HTTP: a message is sent, then the record becomes `queued`, unless it succeeded
        (answered from the ledger) or an attempt holds it (that attempt, or the re-drive job if
        it died, owns it). The message comes first, so a `queued` record always has one; the
        record changes only if nothing else wrote it since it was read (else the newer state
        stands, and the message is a twin the ledger answers)."""
        org, kind, crm_id = request.key
        self.settings.organization(org)
        seen = self.ledger.get(org, kind, crm_id)
        if seen is not None and seen.status in (Status.SUCCEEDED, Status.IN_PROGRESS):
            return seen
        self.enqueue(request)
        marked = self.ledger.mark_queued(request, seen)
        return marked or self.ledger.get(org, kind, crm_id) or seen  # type: ignore[return-value]

    def enqueue(self, request: ImportRequest, delay_seconds: float = 0) -> None:
        url = self.settings.queue_urls.get(request.kind)
        if not url:
            raise ConfigurationError(f"QUEUE_URLS has no queue for kind {request.kind!r}")
        attributes = {"source": {"DataType": "String", "StringValue": request.source}}
        if request.correlation_id:
            attributes["correlation_id"] = {
                "DataType": "String",
                "StringValue": request.correlation_id,
            }
        self.sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps(
                {"organization_id": request.organization_id, "crm_id": request.crm_id}
            ),
            DelaySeconds=min(max(math.ceil(delay_seconds), 0), SQS_MAX_DELAY_SECONDS),
            MessageAttributes=attributes,
            # The tenant of SQS fair queues: one organization's backlog does not hold up
            # another's messages in the kind's queue.
            MessageGroupId=request.organization_id,
        )

    def reject(
        self, kind: str, organization_id: str, crm_id: str, source: str, reason: str
    ) -> ImportRecord | None:
        return self.ledger.reject(organization_id, kind, crm_id, source, reason)
