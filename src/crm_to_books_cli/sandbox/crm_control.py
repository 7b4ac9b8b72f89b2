"""The CRM's control API under `/__sandbox/crm/`: `sb.crm`'s controls, for another process."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from crm_to_books_cli.sandbox.state import JSON

if TYPE_CHECKING:
    from crm_to_books_cli.sandbox.crm import Crm


def _module(body: Mapping[str, Any]) -> str:
    module = body.get("module")
    if not isinstance(module, str):
        raise ValueError("module (a string: Accounts, Contacts, Vendors or Products) is required")
    return module


def _records(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    records = body.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("records (a list of objects of field API names to values) is required")
    return records


def _create(crm: Crm, body: dict[str, Any]) -> JSON:
    return {"records": crm.create_records(_module(body), _records(body))}


def _update(crm: Crm, body: dict[str, Any]) -> JSON:
    return {"records": crm.update_records(_module(body), _records(body))}


def _faults(crm: Crm, body: dict[str, Any]) -> JSON:
    crm.set_faults(**body)
    return crm.fault_state()


def _configure(crm: Crm, body: dict[str, Any]) -> JSON:
    return crm.configure(**body).model_dump(mode="json")


def _list(crm: Crm, query: Mapping[str, str]) -> JSON:
    return {"records": crm.records(_module(query))}


def _state(crm: Crm, query: Mapping[str, str]) -> JSON:
    return {
        "counters": crm.counters(),
        "faults": crm.fault_state(),
        "settings": crm.settings.model_dump(mode="json"),
    }


CRM_POST: dict[str, Callable[[Crm, dict[str, Any]], JSON]] = {
    "/__sandbox/crm/records": _create,
    "/__sandbox/crm/records/update": _update,
    "/__sandbox/crm/faults": _faults,
    "/__sandbox/crm/config": _configure,
}
CRM_GET: dict[str, Callable[[Crm, Mapping[str, str]], JSON]] = {
    "/__sandbox/crm/records": _list,
    "/__sandbox/crm/channels": lambda crm, _: {"channels": crm.channels()},
    "/__sandbox/crm/notifications": lambda crm, _: {"notifications": crm.notifications()},
    "/__sandbox/crm/state": _state,
}
