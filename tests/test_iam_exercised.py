"""What the suites exercised of each function's role, checked after every other test
(tests/conftest.py orders it last).

Every call a function made in this session went through the IAM hook, which recorded it
(tests/support/iam.py): the local stacks' containers and event sources (tests/e2e, one process
per function: exact) and the engine in-process (tests/functional: code a test calls directly plays
the test's function, so a test's own reads through the engine count too). Each call must have
been allowed, and each grant of each role (`crm_to_books.access`: the code's calls and what
Lambda itself does) must have been exercised, or `access.FOR_LAMBDA` says why no local test can.
Grants are compared by resource as `access` names them (the ledger with its index, a
connection's secret, the function's own queue, every kind's queue, its log group).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import pytest

from crm_to_books import access, topology
from crm_to_books.access import Resource
from crm_to_books.topology import FunctionSpec, Names
from tests.support import iam as iam_support

Grant = tuple[str, str]  # (resource as access names it, action)


def function_of(name: str) -> tuple[FunctionSpec, Names]:
    """The function a physical name stands for, and its stack's names."""
    for spec in topology.ALL_FUNCTIONS:
        if name.endswith(f"-{spec.name}"):
            return spec, Names(name.removesuffix(f"-{spec.name}"))
    raise LookupError(f"{name} is no function of the stack")


def resource_of(arn: str, spec: FunctionSpec, names: Names) -> str:
    """The resource as `access` names it, for a function of the stack `names` names."""
    resources = access.actions_by_resource(spec.handler_dir)
    tail = arn.split(":", 5)[-1]
    if arn == "*":
        return access.ANY
    if tail in {f"table/{names.ledger_table}"} or tail.startswith(f"table/{names.ledger_table}/"):
        return Resource.LEDGER
    if tail == f"table/{names.state_table}":
        return Resource.STATE
    if tail.startswith(f"secret:{names.prefix}/connections/"):
        every = Resource.CONNECTIONS_ALL in resources
        return Resource.CONNECTIONS_ALL if every else Resource.CONNECTIONS_USED
    if tail.startswith(f"secret:{names.channel_secret_prefix}"):
        return Resource.CHANNEL_SECRETS
    if tail == f"event-bus/{names.event_bus}":
        return Resource.BUS
    if spec.kind and tail == names.queue(spec.kind):
        return Resource.OWN_QUEUE
    if tail in {names.queue(kind) for kind in _kinds()}:
        return Resource.KIND_QUEUES
    if arn.startswith("arn:") and ":log-group:" in arn:
        return access.LOG_GROUP
    return arn


def _kinds() -> list[str]:
    return [s.kind for s in topology.IMPORT_FUNCTIONS if s.kind]


def granted(spec: FunctionSpec) -> set[Grant]:
    code = {
        (resource.value, action)
        for resource, actions in access.actions_by_resource(spec.handler_dir).items()
        for action in actions
    }
    return code | {(str(g.resource), a) for g in access.for_lambda(spec) for a in g.actions}


def not_local(spec: FunctionSpec) -> dict[Grant, str]:
    return {
        (str(g.resource), action): why
        for g in access.for_lambda(spec)
        for action, why in g.not_local
    }


@pytest.fixture(scope="module")
def exercised(request: pytest.FixtureRequest) -> Mapping[str, set[tuple[str, str, str]]]:
    """(resource, action, decision) the suites' calls needed, by handler folder."""
    if not iam_support.ran_every_suite(request.session):
        pytest.skip("needs the whole tests/functional and tests/e2e suites in this session")
    found: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for call in iam_support.recorded():
        spec, names = function_of(call["function"])
        resource = resource_of(call["resource"], spec, names)
        found[spec.handler_dir].add((str(resource), call["action"], call["decision"]))
    iam_support.report(request.config, found)
    return found


def test_every_call_the_suites_made_was_allowed_by_the_functions_role(
    exercised: Mapping[str, set[tuple[str, str, str]]],
) -> None:
    refused = {
        handler: sorted(c for c in calls if c[2] != "allow") for handler, calls in exercised.items()
    }
    assert not any(refused.values()), f"refused calls the tests tolerated: {refused}"


@pytest.mark.parametrize("handler_dir", sorted(access.CALLS))
def test_every_grant_was_exercised_or_says_why_no_local_test_can(
    exercised: Mapping[str, set[tuple[str, str, str]]], handler_dir: str
) -> None:
    specs = [s for s in topology.ALL_FUNCTIONS if s.handler_dir == handler_dir]
    used = {(resource, action) for resource, action, _ in exercised.get(handler_dir, set())}
    unused = {grant: not_local(spec).get(grant) for spec in specs for grant in granted(spec) - used}
    unexplained = sorted(grant for grant, why in unused.items() if why is None)
    assert not unexplained, (
        f"{handler_dir}: granted, and no test made the call: {unexplained}. Exercise it in a "
        "test, take the grant away if nothing needs it, or (only for what Lambda itself does) "
        "say in access.FOR_LAMBDA why no local test can"
    )
    # A reason why no local test can make a call is wrong once one does.
    stale = sorted({g for spec in specs for g in not_local(spec)} & used)
    assert not stale, f"{handler_dir}: exercised after all, drop the reason: {stale}"
