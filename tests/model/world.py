"""A simulated world for the engine's model-based test: containers, Zoho, SQS and time.

- Every Lambda invocation runs in a thread of its own, and stops at each step it takes outside
  itself (a DynamoDB call and its answer, a Zoho call and its answer, an SQS call, a sleep).
  `Scheduler` lets exactly one invocation run at a time, to its next step, when the test says
  which: any interleaving of containers is one choice of steps, and killing an invocation at a
  step is a container dying between two of its calls.
- `ModelZoho` answers the engine's real `ZohoClient` through a requests transport adapter, so
  the client's own classification runs. It keeps Books' records, the token endpoint's budget and
  access tokens, and logs every call's arrival on the simulated clock. On each call the test
  picks the answer: success, a 5xx before or after the commit, a read timeout before or after
  it, a commit that lands later, a reset, a refused connection, each 429, a 401, a refused or
  lazy look-up, an undocumented token-endpoint failure.
- `ModelQueues` is SQS with the semantics the engine relies on: delays, visibility, receive
  counts and a dead-letter queue.
- DynamoDB is moto, in process: the engine's real conditional writes and transactions.

Time is `SimClock`; each container reads it with its own small skew.
"""

from __future__ import annotations

import itertools
import json
import threading
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

ACCOUNTS = "https://accounts.model.test"
API = "https://api.model.test"
SQS_ENDPOINT = "https://sqs.us-east-1.amazonaws.com"
ACCOUNT_ID = "123456789012"
FULL_SCOPES = frozenset({"ZohoBooks.fullaccess.all"})
STEP_TIMEOUT = 30.0  # a thread that does not reach its next step in this long is a deadlock


class Killed(BaseException):
    """The container died here: nothing after this point runs (not even `except Exception`)."""


class Deadlock(AssertionError):
    pass


# --- time --------------------------------------------------------------------------------------
class SimClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


# --- the scheduler -----------------------------------------------------------------------------
@dataclass(eq=False)
class Task:
    name: str
    started_at: float
    thread: threading.Thread | None = None
    pending: str | None = None  # the step it waits at
    go: bool = False
    done: bool = False
    killed: bool = False
    choice: Any = None  # what the test chose for the step being released
    result: Any = None
    error: BaseException | None = None
    trace: list[str] = field(default_factory=list)
    key: Any = None  # the import an HTTP or SQS invocation is about (its first, for a batch)
    keys: tuple[Any, ...] = ()  # every import an SQS invocation's batch is about
    job: str | None = None  # "redrive" or "keeper" for the scheduled jobs


class Scheduler:
    """One invocation runs at a time, from one step to the next, when the test says so."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._local = threading.local()
        self.tasks: dict[str, Task] = {}
        self.history: list[Task] = []

    def current(self) -> Task | None:
        return getattr(self._local, "task", None)

    def checkpoint(self, label: str) -> Any:
        """Called by the running invocation before each outside step: wait for the test."""
        task = self.current()
        if task is None:
            return None  # the test's own thread
        with self._cv:
            if task.killed:
                raise Killed(label)
            task.pending, task.go = label, False
            task.trace.append(label)
            self._cv.notify_all()
            if not self._cv.wait_for(lambda: task.go, timeout=STEP_TIMEOUT):
                raise Deadlock(f"{task.name} never released at {label}")
            task.pending = None
            if task.killed:
                raise Killed(label)
            return task.choice

    def start(
        self,
        name: str,
        now: float,
        work: Callable[[], Any],
        key: Any = None,
        job: str | None = None,
        keys: tuple[Any, ...] = (),
    ) -> Task:
        assert name not in self.tasks or self.tasks[name].done, f"{name} is busy"
        task = Task(name, started_at=now, key=key, job=job, keys=keys or (key,))

        def run() -> None:
            self._local.task = task
            try:
                task.result = work()
            except BaseException as exc:
                task.error = exc
            finally:
                with self._cv:
                    task.done = True
                    self._cv.notify_all()

        self.tasks[name] = task
        self.history.append(task)
        task.thread = threading.Thread(target=run, name=f"model-{name}", daemon=True)
        with self._cv:
            task.thread.start()
            self._wait_parked(task)
        return task

    def step(self, name: str, choice: Any = None) -> Task:
        task = self.tasks[name]
        with self._cv:
            assert not task.done and task.pending is not None
            task.choice, task.go = choice, True
            self._cv.notify_all()
            self._wait_parked(task)
        return task

    def kill(self, name: str) -> Task:
        task = self.tasks[name]
        with self._cv:
            if task.done:
                return task
            task.killed, task.go = True, True
            self._cv.notify_all()
            self._wait_parked(task)
        assert task.done
        return task

    def kill_all(self) -> None:
        for name, task in list(self.tasks.items()):
            if not task.done:
                self.kill(name)
        for task in self.tasks.values():
            if task.thread is not None:
                task.thread.join(timeout=STEP_TIMEOUT)

    def running(self) -> list[Task]:
        return [t for t in self.tasks.values() if not t.done]

    def _wait_parked(self, task: Task) -> None:
        ok = self._cv.wait_for(
            lambda: task.done or (task.pending is not None and not task.go), timeout=STEP_TIMEOUT
        )
        if not ok:
            raise Deadlock(f"{task.name} did not reach a step: {task.trace[-5:]}")


# --- Zoho --------------------------------------------------------------------------------------
BOOKS_FAULTS = (
    "ok",
    "5xx",
    "5xx_after_commit",
    "timeout_after_commit",
    "commit_late",
    "reset",
    "refused",
    "429_44",
    "429_45",
    "429_1070",
    "401",
    "lookup_400",
    "lookup_ignores_filter",
    "lookup_without_crm_id",
)
TOKEN_FAULTS = ("ok", "5xx", "html_403", "unknown_error", "throttled", "timeout")


@dataclass(frozen=True)
class Key:
    organization_id: str
    kind: str
    crm_id: str


@dataclass
class _Call:
    organization_id: str
    arrived: float
    done: bool = False


class ModelZoho:
    """Zoho Accounts and Books as the engine meets them, answering as the test chooses."""

    def __init__(
        self,
        clock: SimClock,
        scheduler: Scheduler,
        *,
        read_timeout: float,
        max_active_tokens: int = 4,
        missing: frozenset[str] = frozenset(),
    ) -> None:
        self.clock = clock
        self.scheduler = scheduler
        self.read_timeout = read_timeout
        self.max_active_tokens = max_active_tokens
        self.missing = missing
        self.reimport = "duplicate"  # the worst: a second import is a second Books record
        self.refresh_token = "1000.model-refresh-1"
        self.refresh_scopes: frozenset[str] = FULL_SCOPES
        self.revoked: set[str] = set()
        self.access: dict[str, frozenset[str]] = {}  # live access token -> scopes
        self.access_order: deque[str] = deque()
        self.token_requests: list[float] = []  # arrivals at the token endpoint
        self.books: dict[Key, list[str]] = {}  # CRM record -> Books ids, in creation order
        self.calls: list[_Call] = []  # Books calls, at arrival
        self.late: list[tuple[float, Key]] = []  # commits still to land
        self.imports_by_task: Counter[str] = Counter()  # imports each invocation committed
        self._ids = itertools.count(4_600_000_000_000_000_001)
        self._tokens = itertools.count(1)
        self._grants = itertools.count(2)

    # -- the operator's side ------------------------------------------------------------------
    def connect(self, scopes: frozenset[str] = FULL_SCOPES) -> str:
        """A new self-client grant: a new refresh token with `scopes`."""
        self.refresh_token = f"1000.model-refresh-{next(self._grants)}"
        self.refresh_scopes = scopes
        return self.refresh_token

    def revoke(self) -> None:
        self.revoked.add(self.refresh_token)
        for token in list(self.access):
            self.access.pop(token)

    def land_late_commits(self) -> None:
        due = [(t, key) for t, key in self.late if t <= self.clock.now]
        self.late = [(t, key) for t, key in self.late if t > self.clock.now]
        for _, key in due:
            self._commit(key, task=None)

    # -- HTTP ------------------------------------------------------------------------------------
    def handle(self, request: requests.PreparedRequest) -> requests.Response:
        url = urllib.parse.urlsplit(str(request.url))
        token = f"{url.scheme}://{url.netloc}" == ACCOUNTS
        label = "zoho token" if token else f"zoho {request.method} {url.path}"
        fault = self.scheduler.checkpoint(label)
        fault = fault if isinstance(fault, str) else "ok"
        if token:
            return self._token(request, fault)
        query = dict(urllib.parse.parse_qsl(url.query))
        return self._books(request, url.path, query, fault)

    def _token(self, request: requests.PreparedRequest, fault: str) -> requests.Response:
        form = dict(urllib.parse.parse_qsl(str(request.body or "")))
        self.token_requests.append(self.clock.now)
        if fault not in TOKEN_FAULTS:
            fault = "ok"
        if fault == "timeout":
            self.scheduler.checkpoint("answer from zoho token")
            raise requests.exceptions.ReadTimeout("read timed out")
        if fault == "5xx":
            return _response(request, 502, "<html><body>502 Bad Gateway</body></html>")
        if fault == "html_403":
            return _response(request, 403, "<html><body>403 Forbidden</body></html>")
        if fault == "unknown_error":
            return _response(request, 400, {"error": "general_error"})
        recent = [t for t in self.token_requests if t > self.clock.now - 600]
        if fault == "throttled" or len(recent) > 10:
            return _response(
                request,
                400,
                {
                    "error": "Access Denied",
                    "error_description": "You have made too many requests continuously. "
                    "Please try again after some time.",
                    "status": "failure",
                },
            )
        refresh = form.get("refresh_token", "")
        if refresh != self.refresh_token or refresh in self.revoked:
            return _response(request, 200, {"error": "invalid_code"})
        token = f"1000.model-access-{next(self._tokens)}"
        self.access[token] = self.refresh_scopes
        self.access_order.append(token)
        while len(self.access_order) > self.max_active_tokens:  # Zoho drops the oldest
            self.access.pop(self.access_order.popleft(), None)
        return _response(
            request,
            200,
            {"access_token": token, "expires_in": 3600, "api_domain": API, "token_type": "Bearer"},
        )

    def _books(
        self, request: requests.PreparedRequest, path: str, query: dict[str, str], fault: str
    ) -> requests.Response:
        organization_id = query.get("organization_id", "")
        token = str(request.headers.get("Authorization", "")).removeprefix("Zoho-oauthtoken ")
        parts = path.strip("/").split("/")
        action, scope = _route(parts, str(request.method))
        if fault == "refused":  # never connected: nothing arrived
            raise requests.exceptions.ConnectionError(
                "HTTPSConnectionPool: NewConnectionError: [Errno 111] Connection refused"
            )
        call = _Call(organization_id, self.clock.now)
        self.calls.append(call)
        try:
            if fault == "reset":
                self.scheduler.checkpoint("answer from zoho")
                raise requests.exceptions.ConnectionError("Connection reset by peer")
            if token not in self.access or not _allows(self.access[token], scope):
                return self._answer(request, 401, {"code": 57, "message": "not authorized"})
            if fault == "401":
                self.access.pop(token, None)
                return self._answer(request, 401, {"code": 57, "message": "not authorized"})
            for code in (44, 45, 1070):
                if fault == f"429_{code}":
                    return self._answer(request, 429, {"code": code, "message": "throttled"})
            if action == "import":
                return self._import(request, parts, organization_id, fault)
            if action == "read":
                return self._read(request, parts, organization_id)
            return self._list(request, parts, query, organization_id, fault)
        finally:
            call.done = True

    def _import(
        self, request: requests.PreparedRequest, parts: list[str], org: str, fault: str
    ) -> requests.Response:
        kind, crm_id = parts[3], parts[4]
        key = Key(org, kind, crm_id)
        if fault == "5xx":
            return self._answer(request, 500, {"code": 500, "message": "Internal Server Error"})
        if crm_id in self.missing:
            return self._answer(request, 400, {"code": 1002, "message": "no such CRM record"})
        if self.books.get(key) and self.reimport == "error":
            return self._answer(request, 400, {"code": 1001, "message": "already imported"})
        if fault == "commit_late":
            # Lands a little after the client gave up: no later than its read timeout twice.
            self.late.append((self.clock.now + 2 * self.read_timeout, key))
            self.scheduler.checkpoint("answer from zoho")
            raise requests.exceptions.ReadTimeout("read timed out")
        books_id = self._commit(key, task=self.scheduler.current())
        if fault == "5xx_after_commit":
            return self._answer(request, 502, "<html><body>502 Bad Gateway</body></html>")
        if fault == "timeout_after_commit":
            self.scheduler.checkpoint("answer from zoho")
            raise requests.exceptions.ReadTimeout("read timed out")
        id_key = "item_id" if kind == "item" else "contact_id"
        return self._answer(
            request, 200, {"code": 0, "message": "success", "data": {id_key: books_id}}
        )

    def _commit(self, key: Key, task: Task | None) -> str:
        existing = self.books.get(key)
        if existing and self.reimport != "duplicate":
            return existing[0]
        books_id = str(next(self._ids))
        self.books.setdefault(key, []).append(books_id)
        if task is not None:
            self.imports_by_task[task.name] += 1
        return books_id

    def _read(
        self, request: requests.PreparedRequest, parts: list[str], org: str
    ) -> requests.Response:
        resource, books_id = parts[2], parts[3]
        for key, ids in self.books.items():
            if key.organization_id == org and books_id in ids:
                name = "item" if resource == "items" else "contact"
                return self._answer(request, 200, {"code": 0, name: _listed(key, books_id)})
        return self._answer(request, 404, {"code": 1002, "message": "does not exist"})

    def _list(
        self,
        request: requests.PreparedRequest,
        parts: list[str],
        query: dict[str, str],
        org: str,
        fault: str,
    ) -> requests.Response:
        resource = parts[2]
        filters = {k: v for k, v in query.items() if k.startswith("zcrm_")}
        if fault == "lookup_400" and filters:
            return self._answer(request, 400, {"code": 2, "message": "Invalid value passed"})
        rows = []
        for key, ids in self.books.items():
            if key.organization_id != org or (key.kind == "item") != (resource == "items"):
                continue
            if fault != "lookup_ignores_filter" and any(
                _field(key.kind) != name or key.crm_id != value for name, value in filters.items()
            ):
                continue
            for books_id in ids:
                row = _listed(key, books_id)
                if fault == "lookup_without_crm_id":
                    row = {k: v for k, v in row.items() if not k.startswith("zcrm_")}
                rows.append(row)
        more = fault == "lookup_ignores_filter" and len(rows) > 1
        body = {"code": 0, resource: rows[:1] if more else rows, "page_context": {"page": 1}}
        body["page_context"]["has_more_page"] = more  # type: ignore[index]
        return self._answer(request, 200, body)

    def _answer(
        self, request: requests.PreparedRequest, status: int, body: Any
    ) -> requests.Response:
        """The answer travels back: the caller may be killed waiting, or time out."""
        sent = self.clock.now
        self.scheduler.checkpoint("answer from zoho")
        if self.clock.now - sent > self.read_timeout:
            raise requests.exceptions.ReadTimeout("read timed out")
        return _response(request, status, body)


def _route(parts: list[str], method: str) -> tuple[str, str]:
    if parts[2] == "crm":
        kind = parts[3]
        return (
            "import",
            "ZohoBooks.settings.CREATE" if kind == "item" else "ZohoBooks.contacts.CREATE",
        )
    read = "ZohoBooks.settings.READ" if parts[2] == "items" else "ZohoBooks.contacts.READ"
    return ("read" if len(parts) > 3 else "list"), read


def _allows(scopes: frozenset[str], wanted: str) -> bool:
    service, module, _ = wanted.lower().split(".")
    accepted = {wanted.lower(), f"{service}.{module}.all", f"{service}.fullaccess.all"}
    return any(s.lower() in accepted for s in scopes)


def _field(kind: str) -> str:
    return {
        "account": "zcrm_account_id",
        "contact": "zcrm_contact_id",
        "vendor": "zcrm_vendor_id",
        "item": "zcrm_product_id",
    }[kind]


def _listed(key: Key, books_id: str) -> dict[str, Any]:
    if key.kind == "item":
        return {"item_id": books_id, "zcrm_product_id": key.crm_id}
    row: dict[str, Any] = {
        "contact_id": books_id,
        "contact_type": "vendor" if key.kind == "vendor" else "customer",
    }
    for kind in ("account", "contact", "vendor"):
        row[_field(kind)] = key.crm_id if kind == key.kind else ""
    return row


def _response(request: requests.PreparedRequest, status: int, body: Any) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.request = request
    response.url = str(request.url)
    text = body if isinstance(body, str) else json.dumps(body)
    response._content = text.encode()
    kind = "text/html" if isinstance(body, str) else "application/json"
    response.headers = CaseInsensitiveDict({"Content-Type": kind})
    response.reason = "model"
    return response


class ZohoTransport(BaseAdapter):
    """requests' transport for the model's Zoho: the engine's real client, no sockets."""

    def __init__(self, zoho: ModelZoho) -> None:
        super().__init__()
        self.zoho = zoho

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        return self.zoho.handle(request)

    def close(self) -> None:
        pass


def zoho_session(zoho: ModelZoho) -> requests.Session:
    session = requests.Session()
    session.mount("https://", ZohoTransport(zoho))
    return session


# --- SQS -----------------------------------------------------------------------------------------
@dataclass
class Message:
    id: str
    kind: str
    body: str
    attributes: dict[str, Any]
    visible_at: float
    receive_count: int = 0
    receipt: str = ""
    holder: str | None = None  # the container that received it last
    received_at: float | None = None
    task: Task | None = None  # the invocation that received it last

    def key(self) -> Key:
        body = json.loads(self.body)
        return Key(body["organization_id"], self.kind, body["crm_id"])


class ModelQueues:
    """Each kind's queue and its dead-letter queue, on the simulated clock."""

    def __init__(
        self, clock: SimClock, scheduler: Scheduler, visibility: float, max_receives: int
    ) -> None:
        self.clock = clock
        self.scheduler = scheduler
        self.visibility = visibility
        self.max_receives = max_receives
        self.queues: dict[str, list[Message]] = {}
        self.dlq: dict[str, list[Message]] = {}
        self.log: list[tuple[float, str, str, str]] = []  # (time, what, message id, by)
        self._ids = itertools.count(1)

    def url(self, kind: str) -> str:
        return f"{SQS_ENDPOINT}/{ACCOUNT_ID}/model-{kind}-imports"

    def arn(self, kind: str) -> str:
        return f"arn:aws:sqs:us-east-1:{ACCOUNT_ID}:model-{kind}-imports"

    def kind_of(self, url: str) -> str:
        return url.rsplit("/", 1)[1].removeprefix("model-").removesuffix("-imports")

    def messages(self) -> Iterator[Message]:
        for queue in self.queues.values():
            yield from queue

    def dead(self) -> Iterator[Message]:
        for queue in self.dlq.values():
            yield from queue

    def receive(self, kind: str, holder: str) -> Message | None:
        """The next visible message; one received too often goes to the DLQ instead."""
        queue = self.queues.setdefault(kind, [])
        while True:
            visible = [m for m in queue if m.visible_at <= self.clock.now]
            if not visible:
                return None
            message = min(visible, key=lambda m: m.visible_at)
            if message.receive_count >= self.max_receives:
                queue.remove(message)
                self.dlq.setdefault(kind, []).append(message)
                continue
            message.receive_count += 1
            message.visible_at = self.clock.now + self.visibility
            message.receipt = f"r-{next(self._ids)}"
            message.holder = holder
            message.received_at = self.clock.now
            self.log.append((self.clock.now, "received", message.id, holder))
            return message

    def delete(self, kind: str, message: Message) -> None:
        self.log.append((self.clock.now, "deleted", message.id, message.holder or ""))
        self.queues[kind] = [m for m in self.queues.get(kind, []) if m is not message]

    def redrive_dlq(self) -> None:
        """`crm-to-books redrive`: dead-lettered messages back to their queues."""
        for kind, dead in self.dlq.items():
            for message in dead:
                message.receive_count = 0
                message.visible_at = self.clock.now
                self.queues.setdefault(kind, []).append(message)
            dead.clear()


class ModelSqs:
    """The boto3 SQS client calls the engine makes, against `ModelQueues`."""

    def __init__(self, queues: ModelQueues) -> None:
        self._q = queues
        self.meta = type("Meta", (), {"endpoint_url": SQS_ENDPOINT})()

    def send_message(self, **request: Any) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        fault = self._q.scheduler.checkpoint("sqs send")
        if fault == "sqs_down":
            raise ClientError({"Error": {"Code": "ServiceUnavailable"}}, "SendMessage")
        return self._enqueue(request["QueueUrl"], request)

    def _enqueue(self, url: str, request: dict[str, Any]) -> dict[str, Any]:
        kind = self._q.kind_of(url)
        message = Message(
            id=f"m-{next(self._q._ids)}",
            kind=kind,
            body=request["MessageBody"],
            attributes=dict(request.get("MessageAttributes") or {}),
            visible_at=self._q.clock.now + int(request.get("DelaySeconds", 0)),
        )
        self._q.queues.setdefault(kind, []).append(message)
        task = self._q.scheduler.current()
        self._q.log.append(
            (self._q.clock.now, f"sent {message.body}", message.id, task.name if task else "")
        )
        return {"MessageId": message.id}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        """SendMessageBatch: down as a call, or (`sqs_partial`) refusing every other entry."""
        from botocore.exceptions import ClientError

        assert 1 <= len(Entries) <= 10
        fault = self._q.scheduler.checkpoint("sqs send batch")
        if fault == "sqs_down":
            raise ClientError({"Error": {"Code": "ServiceUnavailable"}}, "SendMessageBatch")
        failed, done = [], []
        for i, entry in enumerate(Entries):
            if fault == "sqs_partial" and i % 2 == 0:
                failed.append({"Id": entry["Id"], "SenderFault": False, "Code": "InternalError"})
                continue
            self._enqueue(QueueUrl, {k: v for k, v in entry.items() if k != "Id"})
            done.append({"Id": entry["Id"]})
        return {"Successful": done, "Failed": failed}

    def change_message_visibility(self, **request: Any) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        if self._q.scheduler.checkpoint("sqs visibility") == "sqs_down":
            raise ClientError({"Error": {"Code": "ServiceUnavailable"}}, "ChangeMessageVisibility")
        kind = self._q.kind_of(request["QueueUrl"])
        for message in self._q.queues.get(kind, []):
            if message.receipt == request["ReceiptHandle"]:
                message.visible_at = self._q.clock.now + int(request["VisibilityTimeout"])
                self._q.log.append(
                    (
                        self._q.clock.now,
                        f"visible in {request['VisibilityTimeout']}",
                        message.id,
                        message.holder or "",
                    )
                )
        return {}

    def get_queue_attributes(self, **request: Any) -> dict[str, Any]:
        policy = {"maxReceiveCount": self._q.max_receives}
        return {"Attributes": {"RedrivePolicy": json.dumps(policy)}}
