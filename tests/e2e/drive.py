"""Driving the local stack from outside (tests/e2e/test_fault_tolerance.py and
test_hostile_input.py): the four ways in, the ledger through the status API, queue and DLQ
contents, Books as Zoho holds it, and a sandbox that remembers every token it issued (to look
for them in the logs)."""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from crm_to_books.zoho import ZohoClient
from crm_to_books_cli.local import LocalStack
from crm_to_books_cli.sandbox import ZohoSandbox
from crm_to_books_cli.sandbox.state import Reply
from tests.e2e.helpers import wait_until

Key = tuple[str, str, str]  # (organization_id, kind, crm_id): the ledger's key
TIMEOUT = 30
CHANNELS = ("sqs", "eventbridge", "http", "http-async")


def wait_for[T](
    check: Callable[[], T | None], what: str, timeout: float, interval: float = 0.5
) -> T:
    """Poll `check` (an HTTP round of its own: every half second unless told) until it returns
    something truthy."""
    return wait_until(check, what, timeout, interval)


class RecordingSandbox(ZohoSandbox):
    """The Zoho sandbox, remembering every token it hands out (the secrets logs must not hold)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._issued: set[str] = set()
        self._issued_lock = threading.Lock()

    def _token(self, params: Mapping[str, str]) -> Reply:
        reply = super()._token(params)
        if isinstance(reply.body, Mapping):
            with self._issued_lock:
                for name in ("access_token", "refresh_token"):
                    value = reply.body.get(name)
                    if isinstance(value, str):
                        self._issued.add(value)
        return reply

    def issue_grant_code(self, scope: str = "ZohoBooks.fullaccess.all") -> str:
        code = super().issue_grant_code(scope)
        with self._issued_lock:
            self._issued.add(code)
        return code

    @property
    def issued(self) -> set[str]:
        with self._issued_lock:
            return set(self._issued)


@dataclass
class Answer:
    """What a caller got back for one request."""

    key: Key
    channel: str
    status: int | None = None  # HTTP status; None for SQS and EventBridge
    body: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class Driver:
    """Sends import requests the four ways a caller can, and remembers what was accepted."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._http = ThreadPoolExecutor(8, thread_name_prefix="ft-http")
        self._sequence = 0

    def close(self) -> None:
        self._http.shutdown(wait=True)

    def send(self, requests_: Iterable[tuple[Key, str]]) -> None:
        """Every (key, channel) at once: queued ones in batches, HTTP ones concurrently."""
        pending = list(requests_)
        by_channel: dict[str, list[Key]] = {c: [] for c in CHANNELS}
        for key, channel in pending:
            by_channel[channel].append(key)
        futures = [self._http.submit(self.http, key, False) for key in by_channel["http"]]
        futures += [self._http.submit(self.http, key, True) for key in by_channel["http-async"]]
        self.sqs(by_channel["sqs"])
        self.eventbridge(by_channel["eventbridge"])
        for future in futures:
            future.result()

    def sqs(self, keys: list[Key]) -> None:
        client = aws(self.stack, "sqs")
        for kind in {k[1] for k in keys}:
            of_kind = [k for k in keys if k[1] == kind]
            for start in range(0, len(of_kind), 10):
                chunk = of_kind[start : start + 10]
                entries = [
                    {
                        "Id": str(i),
                        "MessageBody": json.dumps({"organization_id": org, "crm_id": crm_id}),
                    }
                    for i, (org, _, crm_id) in enumerate(chunk)
                ]
                answer = client.send_message_batch(
                    QueueUrl=self.stack.queue_urls[kind], Entries=entries
                )
                assert not answer.get("Failed"), answer
        self._remember(Answer(key, "sqs") for key in keys)

    def eventbridge(self, keys: list[Key]) -> None:
        client = aws(self.stack, "events")
        for start in range(0, len(keys), 10):
            entries = [
                {
                    "EventBusName": self.stack.names.event_bus,
                    "Source": "e2e.fault-tolerance",
                    "DetailType": "Import Requested",
                    "Detail": json.dumps({"kind": kind, "organization_id": org, "crm_id": crm_id}),
                }
                for org, kind, crm_id in keys[start : start + 10]
            ]
            answer = client.put_events(Entries=entries)
            assert answer["FailedEntryCount"] == 0, answer
        self._remember(Answer(key, "eventbridge") for key in keys)

    def http(self, key: Key, asynchronous: bool, attempts: int = 20) -> Answer:
        """POST the import like a well-behaved caller: a 429 (nothing recorded, nothing queued)
        is retried after its Retry-After; any other answer is the service accepting it."""
        org, kind, crm_id = key
        headers = {"X-Correlation-Id": self._correlation_id()}
        if asynchronous:
            headers["Prefer"] = "respond-async"
        for _ in range(attempts):
            response = requests.post(
                f"{self.stack.api_url}/v1/crm/{kind}/{crm_id}/import",
                params={"organization_id": org},
                headers=headers,
                timeout=TIMEOUT,
            )
            if response.status_code != 429:
                break
            time.sleep(min(float(response.headers.get("Retry-After") or 1), 2.0))
        answer = Answer(
            key,
            "http-async" if asynchronous else "http",
            response.status_code,
            response.json(),
            dict(response.headers),
        )
        self._remember([answer])
        return answer

    def _correlation_id(self) -> str:
        with self._lock:
            self._sequence += 1
            return f"ft-{self._sequence}"

    def _remember(self, answers: Iterable[Answer]) -> None:
        with self._lock:
            self.answers.extend(answers)


# By the stack itself, not its id(): a module's stack, once collected, may leave its id to the
# next module's, whose emulator listens on another port (a cached client then reached a closed
# port: seen once as every test of a module refused at once, in a full `make test`).
_clients: weakref.WeakKeyDictionary[LocalStack, dict[str, Any]] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()


def aws(stack: LocalStack, service: str) -> Any:
    """One boto3 client per stack and service (building one costs ~0.1 s; tests poll often)."""
    with _clients_lock:
        clients = _clients.setdefault(stack, {})
        if service not in clients:
            clients[service] = stack.client(service, max_pool_connections=20)
        return clients[service]


# --- the ledger, through the status API -----------------------------------------------------
def ledger(
    stack: LocalStack, organization_id: str, status: str | None = None
) -> dict[Key, dict[str, Any]]:
    """Every record of the organization (with `status`: only those), every page."""
    records: dict[Key, dict[str, Any]] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"organization_id": organization_id, "limit": 100}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        response = requests.get(f"{stack.api_url}/v1/imports", params=params, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        page = response.json()
        for record in page["imports"]:
            records[(record["organization_id"], record["kind"], record["crm_id"])] = record
        cursor = page["next_cursor"]
        if not cursor:
            return records


def ledgers(stack: LocalStack, organizations: Iterable[str]) -> dict[Key, dict[str, Any]]:
    out: dict[Key, dict[str, Any]] = {}
    for organization_id in organizations:
        out |= ledger(stack, organization_id)
    return out


# --- queues -----------------------------------------------------------------------------------
def queue_depth(stack: LocalStack, url: str) -> int:
    """Messages visible, in flight and delayed: everything the queue still holds."""
    attributes = aws(stack, "sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return sum(int(v) for v in attributes.values())


def key_of(body: str, kind: str) -> Key:
    """The import a queue message asks for: a plain body or an EventBridge event."""
    message = json.loads(body)
    fields = message.get("detail", message)
    return (str(fields["organization_id"]), str(fields.get("kind", kind)), str(fields["crm_id"]))


def drain_dlq(stack: LocalStack, kind: str) -> list[Key]:
    """Every message in the kind's DLQ (received, so hidden for a minute; not deleted)."""
    client = aws(stack, "sqs")
    found: list[Key] = []
    while True:
        answer = client.receive_message(
            QueueUrl=stack.dlq_urls[kind],
            MaxNumberOfMessages=10,
            VisibilityTimeout=60,
            WaitTimeSeconds=0,
        )
        messages = answer.get("Messages", [])
        if not messages:
            return found
        found += [key_of(m["Body"], kind) for m in messages]


# --- Zoho's side --------------------------------------------------------------------------------
def connect(stack: LocalStack, sandbox: ZohoSandbox, connection: str) -> str:
    """What `crm-to-books connect` does: a self-client grant code exchanged for a refresh token,
    stored in the connection's secret. Returns the new refresh token."""
    code = sandbox.issue_grant_code()
    refresh_token, _ = ZohoClient().exchange_grant_code(
        sandbox.url, sandbox.client_id, sandbox.client_secret, code
    )
    value = json.dumps(
        {
            "client_id": sandbox.client_id,
            "client_secret": sandbox.client_secret,
            "refresh_token": refresh_token,
            "accounts_url": sandbox.url,
        }
    )
    secrets = aws(stack, "secretsmanager")
    secret_id = stack.names.connection_secret(connection)
    try:
        secrets.put_secret_value(SecretId=secret_id, SecretString=value)
    except secrets.exceptions.ResourceNotFoundException:
        secrets.create_secret(Name=secret_id, SecretString=value)
    return refresh_token


def books_ids(sandbox: ZohoSandbox, organization_id: str) -> dict[tuple[str, str], list[str]]:
    """(kind, CRM id) -> the Books ids Zoho holds for it, read through the Books API."""
    code = sandbox.issue_grant_code()
    _, token = ZohoClient().exchange_grant_code(
        sandbox.url, sandbox.client_id, sandbox.client_secret, code
    )
    headers = {"Authorization": f"Zoho-oauthtoken {token.value}"}
    found: dict[tuple[str, str], list[str]] = {}
    listings = {
        "contacts": ("contact_id", ("account", "contact", "vendor")),
        "items": ("item_id", ("item",)),
    }
    for path, (id_key, kinds) in listings.items():
        page = 1
        while True:
            response = requests.get(
                f"{sandbox.url}/books/v3/{path}",
                params={"organization_id": organization_id, "page": str(page), "per_page": "200"},
                headers=headers,
                timeout=TIMEOUT,
            )
            assert response.status_code == 200, response.text
            body = response.json()
            for row in body[path]:
                for kind in kinds:
                    crm_id = row.get("zcrm_product_id" if kind == "item" else f"zcrm_{kind}_id")
                    if crm_id:
                        found.setdefault((kind, str(crm_id)), []).append(str(row[id_key]))
            if not body["page_context"]["has_more_page"]:
                break
            page += 1
    return found
