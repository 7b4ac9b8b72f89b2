"""`crm-to-books connect` against a deployed stack: the token keeper checks the new connection
at once, then the re-drive job resumes the imports parked on it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from crm_to_books import topology
from crm_to_books_cli.commands.connect import resume_parked
from crm_to_books_cli.target import Target

LATER = (
    "imports parked on this connection resume after the token keeper's and the re-drive "
    "job's next runs (every 5 minutes)"
)


@pytest.fixture
def deployed() -> Iterator[tuple[Target, Stubber]]:
    where = Target(
        session=boto3.Session(region_name="eu-west-1"),
        names=topology.Names("acme-books"),
        api_url=None,
    )
    with Stubber(where.client("lambda")) as stub:
        yield where, stub
        stub.assert_no_pending_responses()


def keeper_answers(stub: Stubber, *connections: dict[str, str], error: bool = False) -> None:
    raw = json.dumps({"connections": list(connections)}).encode()
    answer: dict[str, Any] = {
        "StatusCode": 200,
        "Payload": StreamingBody(io.BytesIO(raw), len(raw)),
    }
    if error:
        answer["FunctionError"] = "Unhandled"
    stub.add_response(
        "invoke", answer, {"FunctionName": "acme-books-token-keeper", "Payload": b"{}"}
    )


def test_a_working_connection_starts_the_redrive_job_asynchronously(
    deployed: tuple[Target, Stubber],
) -> None:
    where, stub = deployed
    keeper_answers(stub, {"connection": "default", "status": "refreshed", "detail": "valid"})
    stub.add_response(
        "invoke",
        {"StatusCode": 202},
        {"FunctionName": "acme-books-redrive", "InvocationType": "Event", "Payload": b"{}"},
    )

    assert resume_parked(where, "default") == (
        "the token keeper acme-books-token-keeper has a usable token for it (refreshed: valid); "
        "re-drive job acme-books-redrive started: imports parked on it resume now"
    )


def test_a_connection_the_keeper_still_finds_broken_starts_nothing_and_says_why(
    deployed: tuple[Target, Stubber],
) -> None:
    where, stub = deployed
    keeper_answers(stub, {"connection": "default", "status": "broken", "detail": "invalid_code"})

    assert resume_parked(where, "default") == (
        "the token keeper acme-books-token-keeper says the connection is broken (invalid_code): "
        "imports parked on it stay parked until it works"
    )


def test_a_connection_the_stack_does_not_use_is_named(deployed: tuple[Target, Stubber]) -> None:
    where, stub = deployed
    keeper_answers(stub, {"connection": "default", "status": "fresh", "detail": "valid"})

    assert resume_parked(where, "eu") == (
        "the stack does not use connection eu: its configuration lists default"
    )


def test_a_failing_keeper_points_at_its_logs(deployed: tuple[Target, Stubber]) -> None:
    where, stub = deployed
    keeper_answers(stub, error=True)

    assert resume_parked(where, "default") == (
        f"{LATER}; the token keeper acme-books-token-keeper failed now: see its logs"
    )


def test_without_permission_to_invoke_the_schedules_still_resume_them(
    deployed: tuple[Target, Stubber],
) -> None:
    where, stub = deployed
    stub.add_client_error(
        "invoke", service_error_code="AccessDeniedException", http_status_code=403
    )

    assert resume_parked(where, "default") == (
        f"{LATER}; starting them now failed (AccessDeniedException)"
    )


@pytest.mark.parametrize("raw", [b"Task timed out", b"null", b"[1, 2]", b'{"connections": 1}'])
def test_a_keeper_answer_not_in_its_shape_is_said_not_raised(
    deployed: tuple[Target, Stubber], raw: bytes
) -> None:
    where, stub = deployed
    stub.add_response(
        "invoke",
        {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(raw), len(raw))},
        {"FunctionName": "acme-books-token-keeper", "Payload": b"{}"},
    )

    assert resume_parked(where, "default") == (
        f"{LATER}; the token keeper acme-books-token-keeper answered something unexpected: "
        "see its logs"
    )
