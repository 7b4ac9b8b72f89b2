"""One import kind's function (IMPORT_KIND): HTTP imports of that kind and its SQS queue."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from crm_to_books import aws, triggers
from crm_to_books.errors import ConfigurationError
from crm_to_books.observability import logger, metrics, tracer
from crm_to_books.ports import ImporterLike

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_sqs import SQSClient


# Built on the first invocation, not at import (cold start), then reused by the container.
@cache
def _importer() -> ImporterLike:
    from crm_to_books.pipeline import Importer

    return Importer()


@cache
def _app() -> APIGatewayRestResolver:
    return _build_app(_importer())


def _build_app(importer: ImporterLike) -> APIGatewayRestResolver:
    # Imported for HTTP only: the REST resolver and its OpenAPI models are a third of a cold
    # start, and most imports come from the queue.
    from crm_to_books import api

    return api.build_app(importer, import_kinds=(_kind(importer),))


def _kind(importer: ImporterLike) -> str:
    kind = importer.settings.import_kind
    if kind is None:
        raise ConfigurationError("IMPORT_KIND: required for an import function")
    return kind


@logger.inject_lambda_context(correlation_id_path=triggers.CORRELATION_ID_PATH)
@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
def handler(
    event: dict[str, Any],
    context: LambdaContext,
    importer: ImporterLike | None = None,
    sqs: SQSClient | None = None,
) -> dict[str, Any]:
    if "httpMethod" in event:
        app = _app() if importer is None else _build_app(importer)
        return app.resolve(event, context)
    if triggers.is_sqs_event(event):
        from crm_to_books import batch

        importer = importer or _importer()
        sqs = sqs or aws.client("sqs")
        return dict(
            batch.process_batch(event, context, importer=importer, kind=_kind(importer), sqs=sqs)
        )
    raise ValueError("unsupported event: expected an API Gateway REST proxy event or SQS batch")
