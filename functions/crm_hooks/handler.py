"""Zoho CRM notifications (`POST /v1/hooks/zoho-crm`, no IAM auth: verified by the channel's
token): each id becomes a queued import. A function of its own, not the status API's: its role
may read channel tokens and send to every kind queue, the status API's only reads the ledger."""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.utilities.typing import LambdaContext

from crm_to_books import api, triggers
from crm_to_books.observability import logger, metrics, tracer
from crm_to_books.ports import HooksLike, ImporterLike


# Built on the first invocation, not at import (cold start), then reused by the container.
@cache
def _app() -> APIGatewayRestResolver:
    from crm_to_books.hooks import CrmHooks
    from crm_to_books.pipeline import Importer

    importer = Importer()
    return api.build_app(importer, hooks=CrmHooks(importer.settings, importer.intake))


@logger.inject_lambda_context(correlation_id_path=triggers.CORRELATION_ID_PATH)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any],
    context: LambdaContext,
    importer: ImporterLike | None = None,
    hooks: HooksLike | None = None,
) -> dict[str, Any]:
    app = _app() if importer is None else api.build_app(importer, hooks=hooks)
    return app.resolve(event, context)
