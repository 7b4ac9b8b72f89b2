"""The scheduled jobs on a real schedule event, against the real engine, moto and the sandbox."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from crm_to_books.attempt import BROKEN_RECHECK_SECONDS
from crm_to_books.models import ImportRequest
from crm_to_books.pipeline import Importer
from crm_to_books.settings import Settings
from crm_to_books_cli.sandbox import ZohoSandbox
from functions.redrive import handler as redrive_fn
from functions.token_keeper import handler as token_fn
from tests.functional.conftest import ORG, put_connection
from tests.support.iam import InProcess
from tests.support.lambda_events import LambdaContext, emitted_metrics, load

SCHEDULE = load("schedule_event")


def test_the_token_keeper_refreshes_then_finds_the_token_fresh(
    new_importer: Callable[..., Importer], sandbox: ZohoSandbox
) -> None:
    context = LambdaContext(function_name="crm-to-books-token-keeper")
    first = token_fn.handler(SCHEDULE, context, importer=new_importer())
    second = token_fn.handler(SCHEDULE, context, importer=new_importer())

    assert [c["status"] for c in first["connections"]] == ["refreshed"]
    assert [c["status"] for c in second["connections"]] == ["fresh"]
    assert sandbox.counters()["token_requests"]["granted"] == 1


def test_the_token_keeper_detects_a_revoked_refresh_token(
    new_importer: Callable[..., Importer],
    sandbox: ZohoSandbox,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sandbox.revoke_refresh_token()
    context = LambdaContext(function_name="crm-to-books-token-keeper")

    answer = token_fn.handler(SCHEDULE, context, importer=new_importer())

    [connection] = answer["connections"]
    assert connection["connection"] == "default" and connection["status"] == "broken"
    out = capsys.readouterr().out
    assert emitted_metrics(out)["ConnectionsBroken"] == 1
    assert sandbox.refresh_token not in out  # no secret reaches a log line


def test_the_redrive_job_re_enqueues_imports_parked_until_now(
    settings: Settings, sandbox: ZohoSandbox, aws_world: dict[str, Any]
) -> None:
    # Given an import parked because the connection broke ...
    sandbox.revoke_refresh_token()
    parked = Importer(settings).run(
        ImportRequest(kind="contact", organization_id=ORG, crm_id="9001")
    )
    assert parked.parked and parked.retry_after
    context = LambdaContext(function_name="crm-to-books-redrive")
    # ... nothing is due yet; once its time has come, the job sends it to its kind's queue.
    assert redrive_fn.handler(SCHEDULE, context, importer=Importer(settings)) == {"redriven": 0}
    later = Importer(settings, clock=lambda: time.time() + parked.retry_after + 1)

    assert redrive_fn.handler(SCHEDULE, context, importer=later) == {"redriven": 1}

    got = boto3.client("sqs").receive_message(
        QueueUrl=aws_world["queue_urls"]["contact"], MessageAttributeNames=["All"]
    )
    [message] = got["Messages"]
    assert json.loads(message["Body"]) == {"organization_id": ORG, "crm_id": "9001"}
    # The import function will record who sent it: the record's sources gain "redrive".
    assert message["MessageAttributes"]["source"]["StringValue"] == "redrive"


def test_a_re_drive_that_cannot_send_leaves_the_import_parked_for_the_next_run(
    settings: Settings,
    sandbox: ZohoSandbox,
    aws_world: dict[str, Any],
    monkeypatch: Any,
    iam: InProcess,
) -> None:
    # Given an import parked because the connection broke, now due
    sandbox.revoke_refresh_token()
    parked = Importer(settings).run(
        ImportRequest(kind="contact", organization_id=ORG, crm_id="9002")
    )
    assert parked.parked and parked.retry_after
    later = Importer(settings, clock=lambda: time.time() + parked.retry_after + 1)

    # When SQS refuses the re-drive's message
    def refused(request: ImportRequest, delay_seconds: float = 0) -> None:
        raise RuntimeError("SQS is down")

    monkeypatch.setattr(later.intake, "enqueue", refused)
    with iam.playing("redrive"), pytest.raises(RuntimeError, match="1 re-driven import"):
        later.redrive_due()

    # Then the record is still parked, and the next run sends it
    record = later.ledger.get(ORG, "contact", "9002")
    assert record and record.parked and record.status.value == "retrying"
    again = Importer(settings, clock=lambda: time.time() + parked.retry_after + 1)
    with iam.playing("redrive"):
        assert again.redrive_due() == 1


def test_a_re_drive_leaves_a_record_its_message_already_ran_as_that_import_left_it(
    settings: Settings, sandbox: ZohoSandbox, iam: InProcess
) -> None:
    # Given a parked record the re-drive job read and sent, whose message an import ran at once
    importer = Importer(settings)
    key = ("account", sandbox.crm_ids["account"][0])
    sandbox.revoke_refresh_token()
    parked = importer.run(ImportRequest(kind=key[0], organization_id=ORG, crm_id=key[1]))
    assert parked.parked
    refresh, _ = importer.zoho.exchange_grant_code(
        sandbox.url, sandbox.client_id, sandbox.client_secret, sandbox.issue_grant_code()
    )
    put_connection(sandbox, refresh)  # the operator connected again
    later = Importer(settings, clock=lambda: time.time() + BROKEN_RECHECK_SECONDS + 1)
    done = later.run(ImportRequest(kind=key[0], organization_id=ORG, crm_id=key[1]))
    assert done.result == "imported"

    # When the job then takes the record it read before
    with iam.playing("redrive"):
        assert importer.ledger.unpark(parked.record) is False

    # Then it stays succeeded and unparked
    record = importer.ledger.get(ORG, *key)
    assert record and record.status.value == "succeeded" and not record.parked


def test_a_retrying_import_whose_message_is_gone_is_sent_again_a_day_later(
    settings: Settings, sandbox: ZohoSandbox, aws_world: dict[str, Any]
) -> None:
    # Given an import waiting for its retry's queue message (Zoho answered 5xx), and one that
    # was dead-lettered
    crm_ids = sandbox.crm_ids["item"][:2]
    sandbox.set_faults(fail_5xx_next=2, scope="imports")
    waiting, dead = (
        Importer(settings).run(
            ImportRequest(kind="item", organization_id=ORG, crm_id=c), last_delivery=last
        )
        for c, last in zip(crm_ids, (False, True), strict=True)
    )
    assert waiting.result == dead.result == "retry_later" and not waiting.parked
    assert dead.record.in_dlq and not waiting.record.in_dlq
    context = LambdaContext(function_name="crm-to-books-redrive")

    # While the message may still come, the job leaves it alone; a day past its time, the
    # message is gone (the send failed, retention ran out): the job sends it again
    assert redrive_fn.handler(SCHEDULE, context, importer=Importer(settings)) == {"redriven": 0}
    later = Importer(settings, clock=lambda: time.time() + 25 * 3600)
    assert redrive_fn.handler(SCHEDULE, context, importer=later) == {"redriven": 1}

    got = boto3.client("sqs").receive_message(QueueUrl=aws_world["queue_urls"]["item"])
    assert [json.loads(m["Body"])["crm_id"] for m in got["Messages"]] == [crm_ids[0]]
