"""The importer function's real handler, invoked in process with recorded Lambda events.

What a path costs per import, handler included: the SQS batch path and the sync HTTP path add
their own logs, metrics flush and (on retries) SQS calls around `Importer.run`.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import time
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.world import World
from crm_to_books import topology

ROOT = Path(__file__).resolve().parent.parent
HANDLER = ROOT / "functions" / "importer" / "handler.py"
EVENTS = ROOT / "tests" / "fixtures" / "events"  # recorded from API Gateway and SQS


@dataclass
class Context:
    """What Powertools reads of Lambda's context."""

    function_name: str = "crm-to-books-item-import"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@cache
def handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_importer_handler", HANDLER)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(HANDLER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return loaded


def http_event(org: str, kind: str, crm_id: int) -> dict[str, Any]:
    event = _event("apigw_rest_import")
    path = f"/v1/crm/{kind}/{crm_id}/import"
    event["path"] = event["resource"] = event["requestContext"]["resourcePath"] = path
    event["pathParameters"] = None
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    event["queryStringParameters"] = {"organization_id": org}
    event["multiValueQueryStringParameters"] = {"organization_id": [org]}
    return event


def sqs_event(org: str, kind: str, crm_ids: range) -> dict[str, Any]:
    template = _event("sqs_batch")["Records"][0]
    records = []
    for crm_id in crm_ids:
        record = copy.deepcopy(template)
        record["messageId"] = str(uuid.uuid4())
        record["body"] = json.dumps({"organization_id": org, "crm_id": str(crm_id)})
        record["eventSourceARN"] = f"arn:aws:sqs:us-east-1:123456789012:crm-to-books-{kind}-imports"
        records.append(record)
    return {"Records": records}


@dataclass
class PathCost:
    """Per import, through the handler: AWS calls by operation, log bytes, service time."""

    calls: dict[str, float]
    log_bytes: float
    service_ms: float  # handler wall time minus the Zoho call, per import


def measure(w: World, path: str, imports: int, first_id: int) -> PathCost:
    """`imports` first-time imports of items through the handler, on `path` (http or sqs)."""
    importer = w.importer(import_kind="item")
    fn = getattr(handler(), topology.HANDLER.rpartition(".")[2])  # as Lambda resolves it
    fn(http_event(w.org, "item", first_id - 1), Context(), importer=importer)  # warm
    w.calls.take()
    logged, zoho, started = w.sink.bytes, w.zoho_seconds, time.perf_counter()
    if path == "http":
        for crm_id in range(first_id, first_id + imports):
            answer = fn(http_event(w.org, "item", crm_id), Context(), importer=importer)
            assert answer["statusCode"] == 200, answer
    else:
        for at in range(first_id, first_id + imports, 10):
            event = sqs_event(w.org, "item", range(at, min(at + 10, first_id + imports)))
            answer = fn(event, Context(), importer=importer)
            assert not answer["batchItemFailures"], answer
    wall = time.perf_counter() - started
    calls = w.calls.take()[0]
    return PathCost(
        calls={op: n / imports for op, n in sorted(calls.items())},
        log_bytes=(w.sink.bytes - logged) / imports,
        service_ms=(wall - (w.zoho_seconds - zoho)) * 1000 / imports,
    )
