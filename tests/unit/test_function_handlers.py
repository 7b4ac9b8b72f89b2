"""The four handler files, decorators included, against fakes: routing, correlation, metrics."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
from aws_lambda_powertools.metrics.provider import cold_start

from crm_to_books.errors import ConfigurationError
from crm_to_books.observability import logger
from functions.importer import handler as importer_fn
from functions.redrive import handler as redrive_fn
from functions.status_api import handler as status_fn
from functions.token_keeper import handler as token_fn
from tests.support.fake_importer import ORG, FakeImporter, FakeSqs, make_settings
from tests.support.lambda_events import (
    LambdaContext,
    api_event,
    emitted_metrics,
    load,
    sqs_event,
    sqs_record,
)

CONTEXT = LambdaContext()
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics:UserWarning")


@pytest.mark.parametrize("module", ["importer", "status_api", "token_keeper", "redrive"])
def test_importing_a_handler_builds_no_client_and_reads_no_settings(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LEDGER_TABLE", "ORGANIZATIONS", "CONNECTIONS", "IMPORT_KIND"):
        monkeypatch.delenv(name, raising=False)
    name = f"functions.{module}.handler"
    monkeypatch.delitem(sys.modules, name, raising=False)
    fresh = importlib.import_module(name)
    cached = [getattr(fresh, f) for f in ("_importer", "_app") if hasattr(fresh, f)]
    assert cached and all(f.cache_info().currsize == 0 for f in cached)


def test_the_import_function_serves_http_for_its_kind() -> None:
    importer = FakeImporter()
    event = api_event("POST", "/v1/crm/account/1001/import", {"organization_id": ORG})

    answer = importer_fn.handler(event, CONTEXT, importer=importer)

    assert answer["statusCode"] == 200
    assert logger.get_correlation_id() == event["requestContext"]["requestId"]


def test_the_import_function_refuses_another_kinds_path() -> None:
    importer = FakeImporter(make_settings(import_kind="item"))
    event = api_event("POST", "/v1/crm/account/1001/import", {"organization_id": ORG})
    answer = importer_fn.handler(event, CONTEXT, importer=importer)
    assert answer["statusCode"] == 400
    assert json.loads(answer["body"])["message"] == (
        "kind: this function imports item records, not account"
    )
    assert importer.calls == []


def test_the_import_function_processes_its_queue(capsys: pytest.CaptureFixture[str]) -> None:
    importer = FakeImporter()
    importer.script("2", result="retry_later", retry_after=7)
    event = sqs_event(
        sqs_record({"organization_id": ORG, "crm_id": "1"}, message_id="m1"),
        sqs_record({"organization_id": ORG, "crm_id": "2"}, message_id="m2"),
        sqs_record({"organization_id": ORG, "crm_id": "3", "kind": "item"}, message_id="m3"),
    )
    sqs = FakeSqs()

    answer = importer_fn.handler(event, CONTEXT, importer=importer, sqs=sqs)

    assert answer == {"batchItemFailures": [{"itemIdentifier": "m2"}]}
    assert sqs.visibility[0]["VisibilityTimeout"] == 7
    assert emitted_metrics(capsys.readouterr().out)["PoisonMessages"] == 1


def test_the_import_function_without_import_kind_fails_loudly() -> None:
    importer = FakeImporter(make_settings(import_kind=None))
    event = sqs_event(sqs_record({"organization_id": ORG, "crm_id": "1"}))
    with pytest.raises(ConfigurationError, match="IMPORT_KIND"):
        importer_fn.handler(event, CONTEXT, importer=importer, sqs=FakeSqs())


def test_the_import_function_refuses_events_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unsupported event"):
        importer_fn.handler(load("schedule_event"), CONTEXT, importer=FakeImporter())


def test_the_status_api_reads_records_and_imports_nothing() -> None:
    importer = FakeImporter()
    importer.run(
        importer_fn.triggers.from_http(
            kind="account", organization_id=ORG, crm_id="1", headers={}, request_id=None
        )
    )
    importer.calls.clear()
    read = status_fn.handler(
        api_event(
            "GET", "/v1/imports/account/1", {"organization_id": ORG}, {"X-Correlation-Id": "c-9"}
        ),
        CONTEXT,
        importer=importer,
    )
    assert read["statusCode"] == 200 and logger.get_correlation_id() == "c-9"
    post = status_fn.handler(
        api_event("POST", "/v1/crm/account/1/import", {"organization_id": ORG}),
        CONTEXT,
        importer=importer,
    )
    assert post["statusCode"] == 400 and importer.names() == ["ledger.get"]


def test_the_token_keeper_reports_each_connection_and_counts_broken_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    cold_start.reset_cold_start_flag()
    importer = FakeImporter()
    importer.token_results = [
        {"connection": "default", "status": "refreshed", "detail": "valid for 3599 s"},
        {"connection": "eu", "status": "broken", "detail": "Zoho said invalid_code"},
    ]
    event = load("schedule_event")

    answer = token_fn.handler(event, CONTEXT, importer=importer)

    assert answer == {"connections": importer.token_results}
    assert logger.get_correlation_id() == event["id"]
    metrics = emitted_metrics(capsys.readouterr().out)
    assert metrics["ConnectionsBroken"] == 1 and metrics["TokensRefreshed"] == 1
    assert metrics["TokensFresh"] == 0 and metrics["ColdStart"] == 1


def test_the_redrive_job_reports_how_many_imports_it_sent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    importer = FakeImporter()
    importer.redrive_count = 3
    assert redrive_fn.handler(load("schedule_event"), CONTEXT, importer=importer) == {"redriven": 3}
    assert emitted_metrics(capsys.readouterr().out)["ImportsRedriven"] == 3
