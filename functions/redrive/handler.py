"""Re-enqueues parked imports whose time has come (EventBridge schedule)."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from crm_to_books import jobs, triggers
from crm_to_books.observability import logger, metrics, tracer
from crm_to_books.ports import ImporterLike

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


# Built on the first invocation, not at import (cold start), then reused by the container.
@cache
def _importer() -> ImporterLike:
    from crm_to_books.pipeline import Importer

    return Importer()


@logger.inject_lambda_context(correlation_id_path=triggers.CORRELATION_ID_PATH)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any], context: LambdaContext, importer: ImporterLike | None = None
) -> dict[str, Any]:
    # The schedule's event carries nothing the job needs: an operator may invoke it with {}.
    return jobs.redrive(importer or _importer())
