"""Queueing the imports a CRM trigger (sweep or notification) found: through `Intake.enqueue`,
the kind's queue, like every import, several messages at once."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from crm_to_books.intake import Intake
from crm_to_books.models import ImportRequest, Source
from crm_to_books.observability import logger

SEND_WORKERS = 8  # messages sent at once (boto3 clients are thread-safe)


def is_crm_id(value: str) -> bool:
    """A Zoho id: 1 to 19 ASCII digits."""
    return value.isascii() and value.isdigit() and 1 <= len(value) <= 19


def enqueue_all(
    intake: Intake,
    kind: str,
    organization_id: str,
    crm_ids: Sequence[str],
    source: Source,
    correlation_id: str | None = None,
) -> dict[str, bool]:
    """Queue an import of each id; whether each message was sent."""

    def one(crm_id: str) -> bool:
        request = ImportRequest(
            kind=kind,
            organization_id=organization_id,
            crm_id=crm_id,
            source=source,
            correlation_id=correlation_id,
        )
        try:
            intake.enqueue(request)
        except Exception:
            logger.exception("could not queue an import", extra={"crm_id": crm_id, "kind": kind})
            return False
        return True

    if not crm_ids:
        return {}
    with ThreadPoolExecutor(max_workers=min(SEND_WORKERS, len(crm_ids))) as pool:
        return dict(zip(crm_ids, pool.map(one, crm_ids), strict=True))
