"""The AWS calls the runtime library really makes, read from its source (an AST walk).

A call is `<anything>.<operation>(...)` where `<operation>` is a boto3 method of the service
(`update_item`, `send_message`, ...), read from botocore's own service models (an SQS batch
operation as the single-message action IAM authorizes it by), or such a
method's name in a string (for `getattr(client, name)(...)`); a transaction's
items (`{"Update": ...}`, `{"Delete": ...}`, ...) count as the item's action; a Powertools
`SecretsProvider` counts as `secretsmanager:GetSecretValue` (all its `get` does). Each
`crm_to_books.access.Calls` names the code it covers; its methods include what they call on
`self` (and a module function what it calls in its module), transitively.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import botocore.session
from botocore import xform_name

import crm_to_books
from crm_to_books.access import Calls, Resource
from crm_to_books_cli.iam.calls import SQS_BATCHES

LIBRARY = Path(crm_to_books.__file__).parent
FUNCTIONS = LIBRARY.parents[3] / "functions"

SERVICE = {
    Resource.LEDGER: "dynamodb",
    Resource.STATE: "dynamodb",
    Resource.CONNECTIONS_USED: "secretsmanager",
    Resource.CONNECTIONS_ALL: "secretsmanager",
    Resource.BUS: "events",
    Resource.OWN_QUEUE: "sqs",
    Resource.KIND_QUEUES: "sqs",
    Resource.CHANNEL_SECRETS: "secretsmanager",
}
# TransactWriteItems is no IAM action: each item needs its own.
TRANSACTION_ITEMS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
}
NOT_ACTIONS = {"transact_write_items", "transact_get_items"}
WRAPPERS = {"SecretsProvider": ("secretsmanager", "secretsmanager:GetSecretValue")}


@dataclass(frozen=True, slots=True)
class CallSite:
    where: str  # file:line
    service: str
    action: str
    node: ast.AST


@cache
def operations() -> dict[str, dict[str, str]]:
    """service -> boto3 method name -> IAM action, for every service the library may use."""
    session = botocore.session.get_session()
    found: dict[str, dict[str, str]] = {}
    for service in sorted(set(SERVICE.values())):
        model = session.get_service_model(service)
        found[service] = {
            xform_name(op): f"{model.signing_name}:{SQS_BATCHES.get(op, op)}"
            if service == "sqs"
            else f"{model.signing_name}:{op}"
            for op in model.operation_names
        }
    return found


@cache
def module(name: str) -> ast.Module:
    path = LIBRARY / f"{name.replace('.', '/')}.py"
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def library_modules() -> list[str]:
    return sorted(p.stem for p in LIBRARY.glob("*.py") if p.stem != "__init__")


@cache
def _handler(folder: str) -> ast.Module:
    path = FUNCTIONS / folder / "handler.py"
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def handler_folders() -> list[str]:
    return sorted(p.parent.name for p in FUNCTIONS.glob("*/handler.py"))


def _defs(body: list[ast.stmt]) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in body if isinstance(n, ast.FunctionDef)}


def _called_names(node: ast.AST, on_self: bool) -> set[str]:
    """Names called as `self.<name>(...)` (on_self) or `<name>(...)`."""
    names: set[str] = set()
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        func = call.func
        if on_self and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if func.value.id == "self":
                names.add(func.attr)
        elif not on_self and isinstance(func, ast.Name):
            names.add(func.id)
    return names


def _closure(defs: dict[str, ast.FunctionDef], roots: list[str], on_self: bool) -> list[ast.AST]:
    seen: list[str] = []
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        if name not in defs:
            raise LookupError(f"{name!r} is not defined where access.py says")
        seen.append(name)
        todo += sorted(_called_names(defs[name], on_self) & set(defs))
    return [defs[name] for name in sorted(seen)]


def code_of(calls: Calls) -> list[ast.AST]:
    """The syntax trees `calls.code` (and `calls.methods`) cover."""
    module_name, _, rest = calls.code.partition(".")
    tree = module(module_name)
    if not rest:
        if calls.methods:
            raise ValueError(f"{calls.code}: a whole module takes no methods")
        return [tree]
    owner, _, method = rest.partition(".")
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    if owner in classes:
        defs = _defs(classes[owner].body)
        roots = [method] if method else list(calls.methods) or list(defs)
        if method and calls.methods:
            raise ValueError(f"{calls.code}: give the method in `code` or in `methods`, not both")
        return _closure(defs, roots, on_self=True)
    if method or calls.methods:
        raise ValueError(f"{calls.code}: {owner} is not a class of {module_name}")
    return _closure(_defs(tree.body), [owner], on_self=False)


def call_sites(tree: ast.AST, filename: str) -> Iterator[CallSite]:
    """Every AWS call in `tree`, for any service the library may use."""
    for node in ast.walk(tree):
        line = f"{filename}:{getattr(node, 'lineno', '?')}"
        for service, action in _actions(node):
            yield CallSite(line, service, action, node)


def _actions(node: ast.AST) -> Iterator[tuple[str, str]]:
    """(service, action) for each AWS call `node` makes or names."""
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in WRAPPERS:
            yield WRAPPERS[name]
        elif isinstance(func, ast.Attribute):
            yield from _methods(func.attr)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield from _methods(node.value)  # a method named in a string: getattr(client, name)
    elif isinstance(node, ast.Dict):
        for key in node.keys:
            if isinstance(key, ast.Constant) and key.value in TRANSACTION_ITEMS:
                yield "dynamodb", TRANSACTION_ITEMS[key.value]


def _methods(name: str) -> Iterator[tuple[str, str]]:
    if name in NOT_ACTIONS:
        return
    for service, methods in operations().items():
        if name in methods:
            yield service, methods[name]


def sites_of(calls: Calls) -> list[CallSite]:
    """The calls `calls.code` makes on its resource's service."""
    service = SERVICE[calls.resource]
    filename = f"{calls.code.partition('.')[0]}.py"
    return [
        site
        for tree in code_of(calls)
        for site in call_sites(tree, filename)
        if site.service == service
    ]


def actions_of(calls: Calls) -> set[str]:
    return {site.action for site in sites_of(calls)}


def every_call_site() -> list[CallSite]:
    """Every AWS call anywhere in the library and the handlers."""
    sites = [s for m in library_modules() for s in call_sites(module(m), f"{m}.py")]
    for folder in handler_folders():
        sites += call_sites(_handler(folder), f"functions/{folder}/handler.py")
    return sites


def clients_built() -> set[str]:
    """The services the library and the handlers build clients for: `client("<service>")` or
    `LazyClient("<service>")`."""
    trees = [module(m) for m in library_modules()] + [_handler(f) for f in handler_folders()]
    return {
        node.args[0].value
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (getattr(node.func, "attr", None) or getattr(node.func, "id", None))
        in {"client", "LazyClient"}
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    }
