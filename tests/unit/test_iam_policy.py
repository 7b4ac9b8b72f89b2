"""IAM's evaluation of identity policies (`crm_to_books_cli.iam.policy`), on the cases that
are easy to get wrong: explicit Deny over Allow, NotAction/NotResource, wildcards in actions
(case-insensitive) and in ARNs (segment-bound), conditions on absent keys, negated operators,
set qualifiers, and what cannot be evaluated (strict, or raised)."""

from __future__ import annotations

from typing import Any

import pytest

from crm_to_books_cli.iam.policy import (
    Decision,
    Request,
    Unevaluable,
    action_matches,
    decide,
    resource_matches,
    revoke,
)

TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/ledger"
INDEX = f"{TABLE}/index/by_status"
QUEUE = "arn:aws:sqs:us-east-1:123456789012:crm-account-imports"
KNOWN = ("aws:SecureTransport", "aws:RequestedRegion", "dynamodb:EnclosingOperation")


def allow(action: Any, resource: Any = "*", **more: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **more}


def deny(action: Any, resource: Any = "*", **more: Any) -> dict[str, Any]:
    return {"Effect": "Deny", "Action": action, "Resource": resource, **more}


def strictly(statements: list[dict[str, Any]], action: str, resource: str, **context: str) -> str:
    """The decision as the local stack takes it: conditions it cannot evaluate, strictly."""
    request = Request(action, resource, context=context, known=KNOWN)
    return decide(statements, request, unknown="strict").value


@pytest.mark.parametrize(
    ("pattern", "action", "matches"),
    [
        ("dynamodb:GetItem", "dynamodb:GetItem", True),
        ("DynamoDB:getitem", "dynamodb:GetItem", True),  # actions are case-insensitive
        ("dynamodb:Get*", "dynamodb:GetItem", True),
        ("dynamodb:*Item", "dynamodb:TransactWriteItems", False),
        ("dynamodb:?etItem", "dynamodb:GetItem", True),
        ("dynamodb:?etItem", "dynamodb:BatchGetItem", False),
        ("*", "sqs:SendMessage", True),
        ("sqs:SendMessage", "sqs:SendMessageBatch", False),  # no prefix match
        ("dynamodb:GetItem", "dynamodb:GetItems", False),
    ],
)
def test_actions_match_whole_with_case_insensitive_wildcards(
    pattern: str, action: str, matches: bool
) -> None:
    assert action_matches(pattern, action) is matches


@pytest.mark.parametrize(
    ("pattern", "resource", "matches"),
    [
        (TABLE, TABLE, True),
        (TABLE, INDEX, False),  # a table's grant is not its index's
        (f"{TABLE}/*", INDEX, True),
        (f"{TABLE}*", INDEX, True),
        ("arn:aws:dynamodb:us-east-1:123456789012:table/Ledger", TABLE, False),  # case counts
        ("arn:aws:dynamodb:*:123456789012:table/ledger", TABLE, True),
        # A * inside a segment stays in it; one that ends a segment may run past colons
        ("arn:aws:sqs:us-east-1:123456789012:crm-*-imports", QUEUE, True),
        ("arn:aws:dynamodb:us-*-1:123456789012:table/ledger", TABLE, True),
        ("arn:aws:dynamodb:us-*:table/ledger", TABLE, True),
        ("arn:aws:dynamodb:us-*1:table/ledger", TABLE, False),
        ("arn:aws:dynamodb:*", TABLE, True),
        ("arn:aws:sqs:us-east-1:123456789012:crm-?ccount-imports", QUEUE, True),
        (
            "arn:aws:logs:us-east-1:1:log-group:/aws/lambda/f:*",
            "arn:aws:logs:us-east-1:1:log-group:/aws/lambda/f:log-stream:x",
            True,
        ),
        ("*", TABLE, True),
    ],
)
def test_resources_match_case_sensitively_with_segment_bound_wildcards(
    pattern: str, resource: str, matches: bool
) -> None:
    assert resource_matches(pattern, resource) is matches


def test_an_allow_is_needed_and_an_explicit_deny_wins() -> None:
    grant = allow(["dynamodb:GetItem", "dynamodb:PutItem"], TABLE)

    assert strictly([grant], "dynamodb:GetItem", TABLE) == "allow"
    assert strictly([grant], "dynamodb:DeleteItem", TABLE) == "implicit_deny"
    assert strictly([grant], "dynamodb:GetItem", INDEX) == "implicit_deny"
    assert strictly([], "dynamodb:GetItem", TABLE) == "implicit_deny"
    # A Deny wins over any Allow, whatever their order, and even a broad Allow
    assert strictly([grant, deny("dynamodb:Get*", TABLE)], "dynamodb:GetItem", TABLE) == (
        "explicit_deny"
    )
    assert strictly([deny("*", TABLE), allow("*")], "dynamodb:PutItem", TABLE) == "explicit_deny"
    assert strictly([deny("*", TABLE), allow("*")], "dynamodb:PutItem", INDEX) == "allow"


def test_not_action_and_not_resource_grant_everything_else() -> None:
    everything_but_deletes = {"Effect": "Allow", "NotAction": "dynamodb:Delete*", "Resource": "*"}
    all_but_the_ledger = {"Effect": "Allow", "Action": "dynamodb:*", "NotResource": [TABLE]}

    assert strictly([everything_but_deletes], "dynamodb:PutItem", TABLE) == "allow"
    assert strictly([everything_but_deletes], "dynamodb:DeleteItem", TABLE) == "implicit_deny"
    assert strictly([everything_but_deletes], "sqs:SendMessage", QUEUE) == "allow"
    assert strictly([all_but_the_ledger], "dynamodb:GetItem", TABLE) == "implicit_deny"
    assert strictly([all_but_the_ledger], "dynamodb:GetItem", INDEX) == "allow"
    # A Deny with NotAction denies every other action
    only_reads = {
        "Effect": "Deny",
        "NotAction": ["dynamodb:Get*", "dynamodb:Query"],
        "Resource": "*",
    }
    assert strictly([allow("*"), only_reads], "dynamodb:Query", INDEX) == "allow"
    assert strictly([allow("*"), only_reads], "dynamodb:PutItem", TABLE) == "explicit_deny"


def test_conditions_on_keys_the_request_has() -> None:
    in_transactions = allow(
        "dynamodb:DeleteItem",
        TABLE,
        Condition={
            "ForAnyValue:StringEquals": {"dynamodb:EnclosingOperation": ["TransactWriteItems"]}
        },
    )
    tls_only = deny("*", "*", Condition={"Bool": {"aws:SecureTransport": False}})

    def delete(**context: str) -> str:
        return strictly([in_transactions, tls_only], "dynamodb:DeleteItem", TABLE, **context)

    assert delete(**{"dynamodb:EnclosingOperation": "TransactWriteItems"}) == "allow"
    assert delete() == "implicit_deny"  # absent key: a positive operator fails
    assert delete(**{"dynamodb:EnclosingOperation": "TransactGetItems"}) == "implicit_deny"
    # Keys are case-insensitive; Bool compares "false" with JSON's false
    assert delete(**{"DynamoDB:enclosingoperation": "TransactWriteItems"}) == "allow"
    assert (
        delete(
            **{"aws:SecureTransport": "false", "dynamodb:EnclosingOperation": "TransactWriteItems"}
        )
        == "explicit_deny"
    )


@pytest.mark.parametrize(
    ("condition", "context", "holds"),
    [
        ({"StringNotEquals": {"aws:RequestedRegion": "eu-west-1"}}, {}, True),  # absent: true
        (
            {"StringNotEquals": {"aws:RequestedRegion": ["eu-west-1", "us-east-1"]}},
            {"aws:RequestedRegion": "us-east-1"},
            False,
        ),
        ({"StringEqualsIfExists": {"aws:RequestedRegion": "eu-west-1"}}, {}, True),
        (
            {"StringEqualsIfExists": {"aws:RequestedRegion": "eu-west-1"}},
            {"aws:RequestedRegion": "us-east-1"},
            False,
        ),
        (
            {"StringLike": {"aws:RequestedRegion": "us-*"}},
            {"aws:RequestedRegion": "us-east-1"},
            True,
        ),
        (
            {"StringEqualsIgnoreCase": {"aws:RequestedRegion": "US-EAST-1"}},
            {"aws:RequestedRegion": "us-east-1"},
            True,
        ),
        ({"Null": {"dynamodb:EnclosingOperation": "true"}}, {}, True),
        ({"Null": {"dynamodb:EnclosingOperation": "false"}}, {}, False),
        ({"ForAllValues:StringEquals": {"dynamodb:EnclosingOperation": "x"}}, {}, True),
        ({"ForAnyValue:StringEquals": {"dynamodb:EnclosingOperation": "x"}}, {}, False),
        # two operators, two keys: all must hold
        (
            {
                "StringEquals": {"aws:RequestedRegion": "us-east-1"},
                "Bool": {"aws:SecureTransport": "true"},
            },
            {"aws:RequestedRegion": "us-east-1"},
            False,
        ),
    ],
)
def test_condition_operators_as_iam_reads_them(
    condition: dict[str, Any], context: dict[str, str], holds: bool
) -> None:
    decision = strictly(
        [allow("sqs:SendMessage", QUEUE, Condition=condition)], "sqs:SendMessage", QUEUE, **context
    )
    assert (decision == "allow") is holds


@pytest.mark.parametrize(
    "condition",
    [
        {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}},  # an operator not evaluated here
        {"StringEquals": {"aws:SourceVpce": "vpce-1"}},  # a key the local stack cannot know
        {"StringLike": {"aws:RequestedRegion": "${aws:PrincipalTag/region}"}},  # a variable
        {"ForSomeValues:StringEquals": {"aws:RequestedRegion": "x"}},
    ],
)
def test_what_cannot_be_evaluated_is_treated_strictly_or_raised(
    condition: dict[str, Any],
) -> None:
    allowed_if = allow("sqs:SendMessage", QUEUE, Condition=condition)
    denied_if = deny("sqs:SendMessage", QUEUE, Condition=condition)
    everything = allow("*")

    # The local stack: such an Allow proves nothing, such a Deny applies
    assert strictly([allowed_if], "sqs:SendMessage", QUEUE) == "implicit_deny"
    assert strictly([everything, denied_if], "sqs:SendMessage", QUEUE) == "explicit_deny"
    # Template tests: say so
    with pytest.raises(Unevaluable):
        decide([allowed_if], Request("sqs:SendMessage", QUEUE, known=KNOWN))


def test_resource_policies_match_their_principal() -> None:
    from_events = {
        "Effect": "Allow",
        "Principal": {"Service": "events.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": QUEUE,
        "Condition": {"ArnEquals": {"aws:SourceArn": "arn:aws:events:us-east-1:1:rule/bus/r*"}},
    }
    send = Request("sqs:SendMessage", QUEUE, "events.amazonaws.com")

    rule = {"aws:SourceArn": "arn:aws:events:us-east-1:1:rule/bus/routes"}
    other_account = {"aws:SourceArn": "arn:aws:events:us-east-1:2:rule/bus/routes"}
    assert (
        decide([from_events], Request(send.action, send.resource, send.service, rule))
        is Decision.ALLOW
    )
    assert (
        decide([from_events], Request(send.action, send.resource, send.service, other_account))
        is Decision.IMPLICIT_DENY
    )
    assert (
        decide([from_events], Request(send.action, send.resource, "sns.amazonaws.com", rule))
        is Decision.IMPLICIT_DENY
    )


def test_revoking_an_action_leaves_the_rest_of_the_role() -> None:
    role = [
        allow(["dynamodb:DeleteItem", "dynamodb:GetItem"], TABLE),
        allow("dynamodb:DeleteItem", INDEX),
        deny("dynamodb:DeleteItem", QUEUE),
    ]

    revoked = revoke(role, "dynamodb:deleteitem")

    assert revoked == [allow(["dynamodb:GetItem"], TABLE), deny("dynamodb:DeleteItem", QUEUE)]
    assert strictly(revoked, "dynamodb:DeleteItem", TABLE) == "implicit_deny"
    assert strictly(revoked, "dynamodb:GetItem", TABLE) == "allow"
