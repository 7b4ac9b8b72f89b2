"""The control API under `/__sandbox/`: the Python controls, for another process to use."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from crm_to_books_cli.sandbox.crm_control import CRM_GET, CRM_POST
from crm_to_books_cli.sandbox.state import JSON, Reply

if TYPE_CHECKING:
    from crm_to_books_cli.sandbox.crm import Crm
    from crm_to_books_cli.sandbox.server import ZohoSandbox

Action = Callable[["ZohoSandbox", dict[str, Any]], JSON]


def _faults(sandbox: ZohoSandbox, body: dict[str, Any]) -> JSON:
    sandbox.set_faults(**body)
    return sandbox.fault_state()


def _limits(sandbox: ZohoSandbox, body: dict[str, Any]) -> JSON:
    organization_id = body.pop("organization_id", None)
    if not isinstance(organization_id, str):
        raise ValueError("organization_id (a string) is required")
    return sandbox.set_limits(organization_id, **body).model_dump(mode="json")


def _revoke(sandbox: ZohoSandbox, body: dict[str, Any]) -> JSON:
    sandbox.revoke_refresh_token(body.get("refresh_token"))
    return {"revoked": True}


def _restore(sandbox: ZohoSandbox, body: dict[str, Any]) -> JSON:
    sandbox.restore_refresh_token(body.get("refresh_token"))
    return {"revoked": False}


def _grant_code(sandbox: ZohoSandbox, body: dict[str, Any]) -> JSON:
    return {"code": sandbox.issue_grant_code(**body)}


def _reset(sandbox: ZohoSandbox, body: dict[str, Any]) -> JSON:
    sandbox.reset()
    return {"reset": True}


def _configure(sandbox: ZohoSandbox, body: dict[str, Any]) -> JSON:
    return sandbox.configure(**body).model_dump(mode="json", exclude={"client_secret"})


def _on_crm(action: Callable[[Crm, dict[str, Any]], JSON]) -> Action:
    return lambda sandbox, body: action(sandbox.crm, body)


_POST: dict[str, Action] = {
    "/__sandbox/faults": _faults,
    "/__sandbox/limits": _limits,
    "/__sandbox/revoke": _revoke,
    "/__sandbox/restore": _restore,
    "/__sandbox/grant-code": _grant_code,
    "/__sandbox/reset": _reset,
    "/__sandbox/config": _configure,
    **{path: _on_crm(action) for path, action in CRM_POST.items()},
}


def handle(
    sandbox: ZohoSandbox, method: str, path: str, query: Mapping[str, str], raw: bytes
) -> Reply:
    try:
        if method == "GET" and path == "/__sandbox/state":
            window = query.get("window")
            return Reply(200, sandbox.state(float(window) if window else None))
        if method == "GET" and path in CRM_GET:
            return Reply(200, CRM_GET[path](sandbox.crm, query))
        action = _POST.get(path)
        if action is None or method != "POST":
            return Reply(404, {"error": f"no control endpoint {method} {path}"})
        body = json.loads(raw or b"{}")
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        return Reply(200, action(sandbox, body))
    except KeyError as error:
        return Reply(404, {"error": str(error.args[0]) if error.args else "not found"})
    except (ValueError, TypeError) as error:  # pydantic's ValidationError is a ValueError
        return Reply(400, {"error": str(error)})
