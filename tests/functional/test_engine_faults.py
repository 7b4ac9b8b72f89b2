"""Unknown outcomes, token trouble and secrets: zero duplicates, nothing lost, nothing leaked."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from crm_to_books.models import Status
from crm_to_books.pipeline import Importer
from crm_to_books.settings import Settings
from crm_to_books_cli.sandbox import ZohoSandbox
from crm_to_books_cli.sandbox.testing import token_request
from tests.functional.conftest import ORG, OffsetClock, past_settle, put_connection
from tests.functional.test_engine_outcomes import imports_of, records_of, request


def test_a_5xx_before_the_import_took_effect_is_looked_up_then_imported(
    sandbox: ZohoSandbox,
    new_importer: Callable[..., Importer],
    clock: OffsetClock,
    settings: Settings,
) -> None:
    crm_id = sandbox.crm_ids["account"][0]
    sandbox.set_faults(fail_5xx_next=1, scope="imports")
    importer = new_importer()

    first = importer.run(request("account", crm_id))
    assert first.result == "retry_later" and not first.rate_limited
    assert first.record.last_error and first.record.last_error.category == "unknown_outcome"
    assert "looked up" in (first.record.detail or "") and first.record.needs_lookup

    clock.advance(past_settle(settings))
    second = importer.run(request("account", crm_id))
    assert second.result == "imported"
    assert (
        imports_of(sandbox, "account", crm_id) == 1 and records_of(sandbox, "account", crm_id) == 1
    )


@pytest.mark.parametrize(
    "faults",
    [
        {"fail_5xx_next": 1, "fail_5xx_after_commit": True, "scope": "imports"},
        {"hang_after_commit_next": 1, "hang_seconds": 4.0, "scope": "imports"},
        {
            "hang_after_commit_next": 1,
            "hang_seconds": 0,
            "drop_after_commit": True,
            "scope": "imports",
        },
    ],
    ids=["5xx-after-commit", "hang-after-commit", "drop-after-commit"],
)
def test_an_import_that_took_effect_unseen_is_found_by_look_up_and_never_duplicated(
    faults: dict[str, Any],
    sandbox: ZohoSandbox,
    new_importer: Callable[..., Importer],
    clock: OffsetClock,
    settings: Settings,
) -> None:
    # The worst Zoho: a second import of the same CRM record creates a second Books record.
    sandbox.configure(reimport="duplicate")
    sandbox.set_faults(**faults)
    crm_id = sandbox.crm_ids["contact"][1]
    importer = new_importer(zoho_read_timeout=1.0)

    first = importer.run(request("contact", crm_id))
    assert first.result == "retry_later"
    assert imports_of(sandbox, "contact", crm_id) == 1  # it did happen

    clock.advance(past_settle(settings))
    second = new_importer().run(request("contact", crm_id))

    assert second.result == "imported"
    assert "found in Books" in (second.record.detail or "")
    assert second.record.books_id
    assert records_of(sandbox, "contact", crm_id) == 1
    assert sandbox.counters()["duplicates"] == 0


def test_a_reset_before_zoho_handled_it_retries_after_a_look_up(
    sandbox: ZohoSandbox,
    new_importer: Callable[..., Importer],
    clock: OffsetClock,
    settings: Settings,
) -> None:
    crm_id = sandbox.crm_ids["item"][0]
    sandbox.set_faults(reset_before_next=1, scope="imports")
    importer = new_importer()

    assert importer.run(request("item", crm_id)).result == "retry_later"
    assert imports_of(sandbox, "item", crm_id) == 0
    clock.advance(past_settle(settings))

    assert importer.run(request("item", crm_id)).result == "imported"
    assert records_of(sandbox, "item", crm_id) == 1


def test_an_attempt_that_died_holding_the_lease_is_looked_up_by_the_next(
    sandbox: ZohoSandbox, settings: Any, new_importer: Callable[..., Importer]
) -> None:
    """A container killed mid-call leaves `in_progress`; once its lease runs out, the next
    attempt must treat the outcome as unknown."""
    from crm_to_books.entities import get_entity

    sandbox.configure(reimport="duplicate")
    crm_id = sandbox.crm_ids["vendor"][0]
    dead = new_importer()
    claim = dead.ledger.begin(
        request("vendor", crm_id), owner="killed", lease_seconds=30, settle_seconds=180
    )
    assert not isinstance(claim, type(None))
    token = dead.tokens.get("default")
    dead.zoho.import_record(token, get_entity("vendor"), ORG, crm_id)  # then it "dies"

    busy = new_importer().run(request("vendor", crm_id))
    assert busy.result == "retry_later" and busy.record.status is Status.IN_PROGRESS
    assert busy.retry_after and 25 < busy.retry_after <= 30

    later = _Clock()
    later.offset = 31.0  # the dead container's lease has run out...
    settling = Importer(settings, clock=later).run(request("vendor", crm_id))
    # ...but what it sent may still be committing: no look-up before the settle time
    assert settling.result == "retry_later" and settling.record.needs_lookup
    assert settling.retry_after and 170 < settling.retry_after <= 180
    assert imports_of(sandbox, "vendor", crm_id) == 1

    later.offset = 30.0 + 181.0
    after = Importer(settings, clock=later).run(request("vendor", crm_id))

    assert after.result == "imported" and "found in Books" in (after.record.detail or "")
    assert records_of(sandbox, "vendor", crm_id) == 1


class _Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_a_revoked_refresh_token_parks_imports_until_the_connection_is_replaced(
    sandbox: ZohoSandbox, settings: Any, aws_world: Any
) -> None:
    clock = _Clock()
    importer = Importer(settings, clock=clock)
    sandbox.revoke_refresh_token()
    ids = sandbox.crm_ids["account"][:2]

    parked = [importer.run(request("account", crm_id, source="sqs")) for crm_id in ids]

    for outcome in parked:
        assert outcome.result == "retry_later" and outcome.parked
        assert (
            outcome.record.last_error and outcome.record.last_error.category == "connection_broken"
        )
        assert "crm-to-books connect" in outcome.record.last_error.message
    token_requests = sandbox.counters()["token_requests"]["total"]
    assert token_requests == 1  # the second import did not ask Zoho again
    # Nothing is due before its time.
    assert importer.redrive_due() == 0

    # The operator connects again: a new grant code gives a new refresh token in the secret.
    refresh, _ = importer.zoho.exchange_grant_code(
        sandbox.url, sandbox.client_id, sandbox.client_secret, sandbox.issue_grant_code()
    )
    put_connection(sandbox, refresh)
    clock.offset = 301.0

    assert importer.redrive_due() == 2
    done = [
        Importer(settings, clock=clock).run(request("account", c, source="redrive")) for c in ids
    ]
    assert [o.result for o in done] == ["imported", "imported"]


def test_imports_parked_on_a_broken_connection_resume_once_the_token_keeper_sees_it_fixed(
    sandbox: ZohoSandbox, settings: Any
) -> None:
    importer = Importer(settings)
    sandbox.revoke_refresh_token()
    ids = sandbox.crm_ids["contact"][:2]
    assert all(importer.run(request("contact", c, source="sqs")).parked for c in ids)

    # The re-drive job (a container of its own) leaves them while the connection is broken...
    assert Importer(settings).redrive_due() == 0
    keeper = Importer(settings)  # the token keeper's warm container
    assert [r["status"] for r in keeper.keep_tokens_fresh()] == ["broken"]

    # ...and resumes them on its first run after the operator connected and the token keeper
    # (which reads the secrets; the re-drive job does not) saw the new refresh token: not
    # 5 minutes after each was parked.
    refresh, _ = importer.zoho.exchange_grant_code(
        sandbox.url, sandbox.client_id, sandbox.client_secret, sandbox.issue_grant_code()
    )
    put_connection(sandbox, refresh)
    assert Importer(settings).redrive_due() == 0
    assert [r["status"] for r in keeper.keep_tokens_fresh()] == ["refreshed"]
    assert Importer(settings).redrive_due() == 2
    done = [Importer(settings).run(request("contact", c, source="redrive")) for c in ids]
    assert [o.result for o in done] == ["imported", "imported"]
    assert [o.record.sources for o in done] == [["redrive", "sqs"]] * 2
    assert [records_of(sandbox, "contact", c) for c in ids] == [1, 1]


def test_zoho_token_throttling_is_waited_out_not_spun_on(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer]
) -> None:
    # Someone else spent this refresh token's 10 requests for the window.
    for _ in range(10):
        token_request(sandbox)
    before = sandbox.counters()["token_requests"]["total"]

    first = new_importer().run(request("account", sandbox.crm_ids["account"][0]))
    second = new_importer().run(request("account", sandbox.crm_ids["account"][1]))

    for outcome in (first, second):
        assert outcome.result == "retry_later"
        assert outcome.retry_after and outcome.retry_after > 500
        assert "10 per 10 minutes" in (outcome.record.detail or "")
    assert sandbox.counters()["token_requests"]["total"] == before + 1


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handlers = logging.getLogger("crm-to-books").handlers
    streams = [h.setStream(buffer) for h in handlers if isinstance(h, logging.StreamHandler)]
    yield buffer
    for h, stream in zip(
        [h for h in handlers if isinstance(h, logging.StreamHandler)], streams, strict=True
    ):
        h.setStream(stream)


def test_no_secret_reaches_a_log_line_an_error_or_a_ledger_record(
    sandbox: ZohoSandbox, new_importer: Callable[..., Importer], captured_logs: io.StringIO
) -> None:
    importer = new_importer()
    outcomes = [importer.run(request("account", sandbox.crm_ids["account"][0]))]
    sandbox.set_faults(fail_5xx_next=1, scope="imports")
    outcomes.append(importer.run(request("account", sandbox.crm_ids["account"][1])))
    outcomes.append(importer.run(request("account", sandbox.crm_ids["missing"])))
    sandbox.configure(max_active_tokens=1)
    importer.tokens.invalidate("default", importer.tokens.get("default"))
    access_token = importer.tokens.get("default").value
    sandbox.revoke_refresh_token()
    outcomes.append(new_importer().run(request("item", sandbox.crm_ids["item"][0])))

    text = captured_logs.getvalue() + "".join(o.record.model_dump_json() for o in outcomes)
    assert "import done" in text
    for secret in (sandbox.client_secret, sandbox.refresh_token, access_token):
        assert secret not in text


def test_an_abandoned_synchronous_attempt_is_finished_by_the_redrive_job(
    sandbox: ZohoSandbox, settings: Any, aws_world: Any
) -> None:
    """A sync call whose function timed out mid-import: nobody will call again, so the re-drive
    job re-enqueues it, and the queued attempt looks it up instead of importing twice."""
    import json

    import boto3

    sandbox.configure(reimport="duplicate")
    crm_id = sandbox.crm_ids["item"][1]
    clock = _Clock()
    importer = Importer(settings, clock=clock)
    importer.ledger.begin(
        request("item", crm_id), owner="timed-out", lease_seconds=30, settle_seconds=180
    )
    from crm_to_books.entities import get_entity

    importer.zoho.import_record(importer.tokens.get("default"), get_entity("item"), ORG, crm_id)
    assert importer.redrive_due() == 0  # its lease still runs

    clock.offset = 120.0
    assert importer.redrive_due() == 1

    messages = boto3.client("sqs").receive_message(QueueUrl=aws_world["queue_urls"]["item"])
    body = json.loads(messages["Messages"][0]["Body"])
    assert body == {"organization_id": ORG, "crm_id": crm_id}
    clock.offset = 30.0 + 181.0  # past the settle time after its lease ended
    outcome = Importer(settings, clock=clock).run(request("item", crm_id, source="redrive"))
    assert outcome.result == "imported" and "found in Books" in (outcome.record.detail or "")
    assert records_of(sandbox, "item", crm_id) == 1


def test_a_replaced_refresh_token_is_used_at_once_even_if_the_old_one_was_also_throttled(
    sandbox: ZohoSandbox, settings: Any
) -> None:
    from crm_to_books import dynamo
    from crm_to_books.tokens import fingerprint

    # Given a connection whose old refresh token was throttled, then refused (broken)
    importer = Importer(settings)
    importer.tokens.client.put_item(
        TableName=settings.state_table,
        Item=dynamo.dump(
            {
                "pk": "token#default",
                "broken": True,
                "broken_reason": "refused",
                "broken_fingerprint": fingerprint("the-old-refresh-token"),
                "throttled_until": time.time() + 500,
            }
        ),
    )

    # When the operator has stored a new one (the secret's token differs from the broken one)
    token = importer.tokens.get("default")

    # Then it is used now: the old token's block went with its broken mark
    assert token.valid_for(time.time()) > 3000
    assert sandbox.counters()["token_requests"]["total"] == 1


def test_a_repair_someone_else_made_first_is_read_again_with_any_new_block(
    sandbox: ZohoSandbox, settings: Any
) -> None:
    from crm_to_books import dynamo
    from crm_to_books.tokens import TokenUnavailable, fingerprint

    importer = Importer(settings)
    # Given this container saw the connection broken (an old refresh token refused)...
    stale = {"pk": "token#default", "broken": True, "broken_fingerprint": fingerprint("old")}
    # ...while another container already repaired it and then met Zoho's token limit
    importer.tokens.client.put_item(
        TableName=settings.state_table,
        Item=dynamo.dump({"pk": "token#default", "throttled_until": time.time() + 500}),
    )

    # Then this one honours the new block instead of the one it cleared in its own copy
    with pytest.raises(TokenUnavailable):
        importer.tokens._raise_if_unusable("default", stale, time.time())
    assert sandbox.counters()["token_requests"]["total"] == 0
