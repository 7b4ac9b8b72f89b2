"""The scheduled maintenance jobs, as the handlers run them: call the engine, report."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from crm_to_books.observability import logger, metrics
from crm_to_books.ports import ImporterLike

# One metric per token status, emitted even when zero so alarms see data, not gaps.
TOKEN_METRICS = {
    "fresh": "TokensFresh",
    "refreshed": "TokensRefreshed",
    "broken": "ConnectionsBroken",
    "throttled": "TokenRefreshThrottled",
}


def keep_tokens_fresh(importer: ImporterLike) -> dict[str, Any]:
    results = importer.keep_tokens_fresh()
    counts = Counter(str(r.get("status")) for r in results)
    for status, name in TOKEN_METRICS.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=counts[status])
    for result in results:
        extra = {k: result.get(k) for k in ("connection", "status", "detail")}
        if result.get("status") == "broken":
            logger.error("Zoho connection broken: run `crm-to-books connect`", extra=extra)
        else:
            logger.info("connection token checked", extra=extra)
    return {"connections": [dict(r) for r in results]}


def redrive(importer: ImporterLike) -> dict[str, int]:
    count = importer.redrive_due()
    metrics.add_metric(name="ImportsRedriven", unit=MetricUnit.Count, value=count)
    logger.info("parked imports re-enqueued", extra={"count": count})
    return {"redriven": count}
