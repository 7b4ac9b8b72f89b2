"""A botocore hook that refuses, the way AWS does, every call a function's role does not allow.

Two handlers on a client's (or every new session's) events:
- `before-parameter-build`: reads the call's parameters (`calls.needed`), asks the caller's role
  for each authorization (`policy.decide`, conditions treated strictly) and, on the first
  refusal, leaves the service's error answer in the request context;
- `before-call`: returns that answer instead of sending the request, so botocore raises the
  service's own modeled exception (`AccessDeniedException`, SQS's `AccessDenied`) with AWS's
  message, status and metadata. Nothing reaches the emulator, and no retry is made.

The local stack writes each function's role to a JSON file (`write_role_file`) and a container
installs the hook before importing the handler (`install_from_env`, called by the container's
bootstrap): every boto3 session the function then creates is checked against its own role.
The file is read again when it changes, as a role's policy changes reach running functions.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from crm_to_books_cli.iam.calls import REFUSALS, Needed, Refusal, Where, needed
from crm_to_books_cli.iam.cfn import Role
from crm_to_books_cli.iam.policy import Decision, Request, decide

ROLE_FILE_ENV = "LOCAL_IAM_ROLE_FILE"  # the container's role, written by the local stack
_REFUSAL_KEY = "crm_to_books_iam_refusal"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Caller:
    """A function calling AWS with its execution role, in one account."""

    function: str
    role: Role
    where: Where

    @property
    def principal(self) -> str:
        """The assumed-role session Lambda gives the function (named after it)."""
        w = self.where
        return f"arn:{w.partition}:sts::{w.account}:assumed-role/{self.role.name}/{self.function}"

    def request(self, need: Needed, region: str) -> Request:
        context = {
            "aws:SecureTransport": "true",  # the SDK calls AWS over TLS
            "aws:RequestedRegion": region,
            "aws:PrincipalArn": self.role.arn,
            "aws:PrincipalAccount": self.where.account,
            "aws:PrincipalType": "AssumedRole",
            **dict(need.context),
        }
        known = {*context, "dynamodb:EnclosingOperation"}
        return Request(need.action, need.resource, context=context, known=known)

    def decide(self, need: Needed, region: str) -> Decision:
        return decide(self.role.statements, self.request(need, region), unknown="strict")


Recorder = Callable[[Caller, Needed, Decision], None]


def refusal_message(caller: Caller, need: Needed, decision: Decision, refusal: Refusal) -> str:
    """AWS's access-denied message for an identity-based policy."""
    action = need.action.lower() if refusal.lowercase_action else need.action
    on = "" if need.resource == "*" else f" on resource: {need.named}"
    why = (
        "with an explicit deny in an identity-based policy"
        if decision is Decision.EXPLICIT_DENY
        else f"because no identity-based policy allows the {action} action"
    )
    return f"User: {caller.principal} is not authorized to perform: {action}{on} {why}"


class _Empty:
    def stream(self, **_: Any) -> list[bytes]:
        return [b""]


def error_answer(prefix: str, message: str) -> tuple[Any, dict[str, Any]]:
    """(HTTP response, parsed response) as botocore has them for the service's refusal."""
    from botocore.awsrequest import AWSResponse
    from botocore.compat import HTTPHeaders

    refusal = REFUSALS.get(prefix, Refusal())
    request_id = str(uuid.uuid4())
    headers = {"x-amzn-requestid": request_id, "content-type": "application/x-amz-json-1.0"}
    http_headers = HTTPHeaders()
    for name, value in headers.items():
        http_headers[name] = value
    http = AWSResponse("", refusal.status, http_headers, _Empty())
    error = {"Code": refusal.code, "Message": message}
    if refusal.code == "AccessDenied":
        error["Type"] = "Sender"
    parsed = {
        "Error": error,
        "ResponseMetadata": {
            "RequestId": request_id,
            "HTTPStatusCode": refusal.status,
            "HTTPHeaders": headers,
            "RetryAttempts": 0,
        },
    }
    return http, parsed


class Enforcer:
    """Checks each call against the role(s) `callers()` gives (none: the call is not a
    function's, and goes through). Several roles: any one of them may allow it (one process
    playing several functions that differ only by resources, e.g. in-process tests)."""

    def __init__(
        self, callers: Callable[[], Sequence[Caller]], record: Recorder | None = None
    ) -> None:
        self._callers = callers
        self._record = record

    def attach(self, events: Any) -> None:
        """Register on a botocore event emitter (a client's `meta.events` or a session's)."""
        events.register("before-parameter-build", self.before_parameter_build)
        events.register("before-call", self.before_call)

    def handlers(self) -> list[tuple[str, Callable[..., Any]]]:
        return [
            ("before-parameter-build", self.before_parameter_build),
            ("before-call", self.before_call),
        ]

    def refusal(
        self, prefix: str, operation: str, params: Mapping[str, Any], region: str
    ) -> str | None:
        """AWS's message refusing the call, or None if the caller's role allows all of it."""
        callers = self._callers()
        if not callers:
            return None
        where = replace(callers[0].where, region=region)
        for need in needed(prefix, operation, params, where):
            decisions = [(c, c.decide(need, region)) for c in callers]
            allowed = [c for c, d in decisions if d is Decision.ALLOW]
            caller, decision = (allowed[0], Decision.ALLOW) if allowed else decisions[0]
            if self._record is not None:
                self._record(caller, need, decision)
            if decision is not Decision.ALLOW:
                return refusal_message(caller, need, decision, REFUSALS.get(prefix, Refusal()))
        return None

    def before_parameter_build(
        self, params: Mapping[str, Any], model: Any, context: dict[str, Any], **_: Any
    ) -> None:
        prefix = model.service_model.signing_name
        region = context.get("client_region") or ""
        message = self.refusal(prefix, model.name, params, region)
        if message is not None:
            context[_REFUSAL_KEY] = (prefix, message)

    def before_call(self, context: dict[str, Any], **_: Any) -> Any:
        refused = context.pop(_REFUSAL_KEY, None)
        return None if refused is None else error_answer(*refused)


# --- the container's side ------------------------------------------------------------------------
def write_role_file(
    path: Path, caller: Caller, secrets: Mapping[str, str], record: Path | None = None
) -> None:
    """The role a container enforces: written whole, then moved into place (a container reading
    it meanwhile sees the old file or the new one)."""
    w = caller.where
    document = {
        "function": caller.function,
        "role": {"logical_id": caller.role.logical_id, "name": caller.role.name},
        "role_arn": caller.role.arn,
        "statements": list(caller.role.statements),
        "partition": w.partition,
        "region": w.region,
        "account": w.account,
        "secrets": dict(secrets),
        "record": str(record) if record else None,
    }
    staging = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    staging.write_text(json.dumps(document), encoding="utf-8")
    staging.replace(path)


def read_role_file(path: Path) -> tuple[Caller, Path | None]:
    document = json.loads(path.read_text(encoding="utf-8"))
    secrets: dict[str, str] = document["secrets"]
    where = Where(document["partition"], document["region"], document["account"], secrets.get)
    role = Role(
        document["role"]["logical_id"],
        document["role"]["name"],
        document["role_arn"],
        tuple(document["statements"]),
    )
    record = Path(document["record"]) if document.get("record") else None
    return Caller(document["function"], role, where), record


class RoleFile:
    """The caller a role file describes, read again whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: int | None = None
        self._caller: tuple[Caller, ...] = ()
        self.record_to: Path | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Sequence[Caller]:
        changed = self.path.stat().st_mtime_ns
        with self._lock:
            if changed != self._seen:
                caller, self.record_to = read_role_file(self.path)
                self._caller, self._seen = (caller,), changed
            return self._caller


class FileRecorder:
    """Appends each (function, action, resource, decision) once to a JSON-lines file shared by
    every container (one short line per write: appends of whole lines do not interleave)."""

    def __init__(self, path: Callable[[], Path | None]) -> None:
        self._path = path
        self._seen: set[tuple[str, str, str, str]] = set()
        self._lock = threading.Lock()

    def __call__(self, caller: Caller, need: Needed, decision: Decision) -> None:
        path = self._path()
        key = (caller.function, need.action, need.resource, decision.value)
        if path is None or key in self._seen:
            return
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
            line = dict(zip(("function", "action", "resource", "decision"), key, strict=True))
            with path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")


def install_from_env(environ: Mapping[str, str] = os.environ) -> bool:
    """In a local Lambda container, before the handler is imported: every botocore session
    created from now on checks its calls against the role in `LOCAL_IAM_ROLE_FILE`."""
    path = environ.get(ROLE_FILE_ENV)
    if not path:
        return False
    import botocore.handlers

    role = RoleFile(Path(path))
    role()  # fail at init, not at the first call, if the file is missing or malformed
    enforcer = Enforcer(role, FileRecorder(lambda: role.record_to))
    # The list every new botocore session registers its handlers from (moto's mock hooks in
    # the same way): boto3's default session and each `boto3.session.Session()` get it.
    botocore.handlers.BUILTIN_HANDLERS.extend(enforcer.handlers())
    return True
