"""CRM sweeps (a sync's schedule, `crm-to-books sync`) and notification channels (the renewal
schedule, `crm-to-books watch`): see `crm_to_books.crm_sync` for the events it takes."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from crm_to_books import triggers
from crm_to_books.observability import logger, metrics, tracer

if TYPE_CHECKING:
    from crm_to_books.crm_sync import CrmSync

# Stop this long before Lambda's timeout: the run saves its checkpoint and answers in time.
MARGIN_SECONDS = 10.0


# Built on the first invocation, not at import (cold start), then reused by the container.
@cache
def _crm() -> CrmSync:
    from crm_to_books.crm_sync import CrmSync

    return CrmSync()


@logger.inject_lambda_context(correlation_id_path=triggers.CORRELATION_ID_PATH)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any], context: LambdaContext, crm: CrmSync | None = None
) -> dict[str, Any]:
    time_left = context.get_remaining_time_in_millis() / 1000 - MARGIN_SECONDS
    return (crm or _crm()).handle(event, time_left, context.aws_request_id)
