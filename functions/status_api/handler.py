"""The status API: import records, health, and the OpenAPI document."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver

from crm_to_books import api, triggers
from crm_to_books.observability import logger, metrics, tracer
from crm_to_books.ports import ImporterLike

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


# Built on the first invocation, not at import (cold start), then reused by the container.
@cache
def _app() -> APIGatewayRestResolver:
    from crm_to_books.pipeline import Importer

    return api.build_app(Importer())


@logger.inject_lambda_context(correlation_id_path=triggers.CORRELATION_ID_PATH)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any], context: LambdaContext, importer: ImporterLike | None = None
) -> dict[str, Any]:
    app = _app() if importer is None else api.build_app(importer)
    return app.resolve(event, context)
