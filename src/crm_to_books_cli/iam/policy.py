"""IAM's evaluation of one set of policy statements: does it allow this request?

IAM's rule within one policy set: an applicable `Deny` wins (explicit deny), else an applicable
`Allow` is needed, else the request is implicitly denied. A statement applies when its
`Action`/`NotAction`, `Resource`/`NotResource`, `Principal` (resource policies) and every
`Condition` match.

- Actions match case-insensitively, with `*` and `?`.
- Resources match case-sensitively; `*` and `?` stay within one colon-separated segment of the
  ARN, except a `*` that ends a segment, which may run past colons (IAM's documented rule).
- Conditions: the `String*` (incl. `IgnoreCase`), `Arn*`, `Bool`, `Numeric*` and `Null`
  operators, each with `...IfExists`, and the `ForAnyValue:`/`ForAllValues:` set qualifiers. A
  key absent from the request fails a positive operator and satisfies a negated one, as IAM does.
  What cannot be evaluated here (another operator, a policy variable, a key the caller says it
  cannot know) is treated strictly with `unknown="strict"` (the local stack): such an `Allow`
  does not apply and such a `Deny` does; with `unknown="raise"` (template tests) it raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import Any, Literal

Unknown = Literal["strict", "raise"]


class Decision(StrEnum):
    ALLOW = "allow"
    EXPLICIT_DENY = "explicit_deny"  # a Deny statement applies
    IMPLICIT_DENY = "implicit_deny"  # no Allow statement applies


class Unevaluable(NotImplementedError):
    """A condition this evaluator cannot decide."""


@dataclass(frozen=True)
class Request:
    """One authorization question: may the caller do `action` on `resource`?

    `service` is the calling AWS service's principal (`events.amazonaws.com`), for resource
    policies; `context` the request's condition keys. `known` lists the keys the caller can
    answer; a condition on any other key cannot be evaluated (None: every key is known, and an
    absent one is absent)."""

    action: str
    resource: str
    service: str | None = None
    context: Mapping[str, str | Sequence[str]] = field(default_factory=dict)
    known: Collection[str] | None = None

    def with_transport(self) -> Request:
        """Every SDK call and every delivery between AWS services travels over TLS."""
        context = {"aws:SecureTransport": "true", **self.context}
        return Request(self.action, self.resource, self.service, context, self.known)


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- patterns ------------------------------------------------------------------------------------
@cache
def _glob(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """`*` any characters, `?` one: IAM's wildcards in actions and condition values."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


@cache
def _resource_glob(pattern: str) -> re.Pattern[str]:
    """A `Resource` pattern: wildcards stay within a segment, but a `*` ending a segment may
    match past its colons."""
    body = []
    for i, c in enumerate(pattern):
        if c == "*":
            ends_segment = i + 1 == len(pattern) or pattern[i + 1] == ":"
            body.append(".*" if ends_segment else "[^:]*")
        elif c == "?":
            body.append("[^:]")
        else:
            body.append(re.escape(c))
    return re.compile("^" + "".join(body) + "$", re.DOTALL)


def action_matches(pattern: str, action: str) -> bool:
    return bool(_glob(pattern, True).match(action))


def resource_matches(pattern: str, resource: str) -> bool:
    return bool(_resource_glob(pattern).match(resource))


def _arn_like(want: str, got: str) -> bool:
    """ArnLike/ArnEquals: each of the six colon-separated parts matched on its own."""
    wants, gots = want.split(":", 5), got.split(":", 5)
    if len(wants) != len(gots):
        return False
    return all(_glob(w, False).match(g) for w, g in zip(wants, gots, strict=True))


def _numeric(compare: Callable[[float, float], bool]) -> Callable[[str, str], bool]:
    return lambda want, got: compare(float(got), float(want))


# Positive operators: does the request's value match one of the policy's values?
_MATCH: dict[str, Callable[[str, str], bool]] = {
    "StringEquals": lambda w, g: w == g,
    "StringEqualsIgnoreCase": lambda w, g: w.lower() == g.lower(),
    "StringLike": lambda w, g: bool(_glob(w, False).match(g)),
    "ArnEquals": _arn_like,
    "ArnLike": _arn_like,
    "Bool": lambda w, g: w.lower() == g.lower(),
    "NumericEquals": _numeric(lambda g, w: g == w),
    "NumericLessThan": _numeric(lambda g, w: g < w),
    "NumericLessThanEquals": _numeric(lambda g, w: g <= w),
    "NumericGreaterThan": _numeric(lambda g, w: g > w),
    "NumericGreaterThanEquals": _numeric(lambda g, w: g >= w),
}
# Negated operators: true when the value matches none of the policy's values.
_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotEqualsIgnoreCase": "StringEqualsIgnoreCase",
    "StringNotLike": "StringLike",
    "ArnNotEquals": "ArnEquals",
    "ArnNotLike": "ArnLike",
    "NumericNotEquals": "NumericEquals",
}


# --- conditions ----------------------------------------------------------------------------------
def _lookup(context: Mapping[str, Any], key: str) -> list[str] | None:
    """The request's values for `key` (condition keys are case-insensitive), None if absent."""
    wanted = key.lower()
    for name, value in context.items():
        if name.lower() == wanted:
            return [str(v) for v in listed(value)]
    return None


def _one_condition(operator: str, key: str, wants: list[Any], request: Request) -> bool:
    qualifier, _, base = operator.rpartition(":")
    if qualifier not in {"", "ForAnyValue", "ForAllValues"}:
        raise Unevaluable(f"set qualifier {qualifier!r}")
    if_exists = base.endswith("IfExists") and base != "IfExists"
    base = base.removesuffix("IfExists") if if_exists else base
    if request.known is not None and key.lower() not in {k.lower() for k in request.known}:
        raise Unevaluable(f"condition key {key!r} has no value here")
    values = [str(w).lower() if isinstance(w, bool) else str(w) for w in wants]
    if any("${" in v for v in values):
        raise Unevaluable(f"policy variable in {values}")
    got = _lookup(request.context, key)
    if base == "Null":
        return (got is None) == (values[0].lower() == "true")
    negated = base in _NEGATED
    match = _MATCH.get(_NEGATED.get(base, base))
    if match is None:
        raise Unevaluable(f"condition operator {operator!r}")
    if got is None:
        if qualifier == "ForAllValues":
            return True
        if qualifier == "ForAnyValue":
            return False
        return if_exists or negated

    def holds(value: str) -> bool:
        try:
            found = any(match(w, value) for w in values)
        except ValueError:  # a Numeric operator on a value that is no number
            found = False
        return not found if negated else found

    if qualifier == "ForAllValues":
        return all(holds(v) for v in got)
    return any(holds(v) for v in got)


def conditions_hold(conditions: Mapping[str, Mapping[str, Any]], request: Request) -> bool:
    """Every operator's every key holds (AND); one key's values are alternatives (OR)."""
    return all(
        _one_condition(operator, key, listed(wants), request)
        for operator, tests in conditions.items()
        for key, wants in tests.items()
    )


# --- statements ----------------------------------------------------------------------------------
def _principal_matches(principal: Any, request: Request) -> bool:
    if principal is None:  # an identity-based policy: the principal is the policy's holder
        return True
    if principal == "*":
        return True
    if isinstance(principal, dict):
        if "*" in listed(principal.get("AWS", [])):
            return True
        return request.service in listed(principal.get("Service", []))
    return False


def _matches(statement: Mapping[str, Any], request: Request) -> bool:
    """Does the statement name this request (before its conditions)?"""
    if "NotPrincipal" in statement:
        raise Unevaluable("NotPrincipal")
    if "Action" in statement:
        if not any(action_matches(p, request.action) for p in listed(statement["Action"])):
            return False
    elif any(action_matches(p, request.action) for p in listed(statement["NotAction"])):
        return False
    if "Resource" in statement:
        if not any(resource_matches(p, request.resource) for p in listed(statement["Resource"])):
            return False
    elif "NotResource" in statement and any(
        resource_matches(p, request.resource) for p in listed(statement["NotResource"])
    ):
        return False
    return _principal_matches(statement.get("Principal"), request)


def _applies(statement: Mapping[str, Any], request: Request, unknown: Unknown) -> bool:
    if not _matches(statement, request):
        return False
    try:
        return conditions_hold(statement.get("Condition", {}), request)
    except Unevaluable:
        if unknown == "raise":
            raise
        return bool(
            statement["Effect"] == "Deny"
        )  # strictly: an Allow needs proof, a Deny does not


def decide(
    statements: Iterable[Mapping[str, Any]], request: Request, *, unknown: Unknown = "raise"
) -> Decision:
    """IAM's decision within one policy set."""
    applicable = [s["Effect"] for s in statements if _applies(s, request, unknown)]
    if "Deny" in applicable:
        return Decision.EXPLICIT_DENY
    return Decision.ALLOW if "Allow" in applicable else Decision.IMPLICIT_DENY


def allows(statements: Iterable[Mapping[str, Any]], request: Request) -> bool:
    """`decide`, for a call made over TLS (every SDK call and service delivery is)."""
    return decide(statements, request.with_transport()) is Decision.ALLOW


def granted(statements: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """Every (action, resource) an identity policy's Allow statements name, as written."""
    return {
        (str(action), str(resource))
        for s in statements
        if s["Effect"] == "Allow"
        for action in listed(s["Action"])
        for resource in listed(s["Resource"])
    }


def revoke(statements: Iterable[Mapping[str, Any]], action: str) -> list[Mapping[str, Any]]:
    """The statements with `action` taken out of every Allow (one left with no action goes)."""
    kept: list[Mapping[str, Any]] = []
    for statement in statements:
        if statement["Effect"] != "Allow" or "Action" not in statement:
            kept.append(statement)
            continue
        actions = [a for a in listed(statement["Action"]) if a.lower() != action.lower()]
        if actions:
            kept.append({**statement, "Action": actions})
    return kept
