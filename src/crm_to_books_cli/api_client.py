"""The service's HTTP API, as the operator commands call it: SigV4-signed against a deployed
stack (IAM auth), `x-api-key` in API-key mode, plain against the local stack."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from crm_to_books_cli.target import CliError, Target

TIMEOUT = (5.0, 35.0)  # API Gateway's integration limit is 29 s
PAGE_SIZE = 100  # the API's largest page


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    text: str

    @property
    def record(self) -> dict[str, Any] | None:
        record = self.body.get("import")
        return record if isinstance(record, dict) else None

    @property
    def message(self) -> str:
        return str(self.body.get("message") or self.text[:200] or f"HTTP {self.status}")

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


class Api:
    """Thread-safe enough for the bulk follower: one requests session per thread."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.base = target.require_api()
        self._local = threading.local()

    @property
    def _http(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        session: requests.Session = self._local.session
        return session

    def call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
        url = f"{self.base}{path}" + (f"?{query}" if query else "")
        sent = {"Accept": "application/json", **(headers or {})}
        if self.target.api_key:
            sent["x-api-key"] = self.target.api_key
        elif self.target.sign:
            sent = self._signed(method, url, sent)
        try:
            response = self._http.request(method, url, headers=sent, timeout=TIMEOUT)
        except requests.ConnectionError:
            raise CliError(
                f"cannot reach the API at {self.base}: is the stack running (make dev for --local)?"
            ) from None
        except requests.Timeout:
            raise CliError(f"the API at {self.base} did not answer in time") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        answer = Answer(
            response.status_code,
            body if isinstance(body, dict) else {},
            dict(response.headers),
            response.text,
        )
        if "code" not in answer.body and answer.status in {403, 502, 504}:
            # API Gateway's own answer (no service code): auth refused, route or function broken.
            raise CliError(f"the API answered HTTP {answer.status}: {answer.message}")
        return answer

    def _signed(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        credentials = self.target.session.get_credentials()
        if credentials is None:
            raise CliError(
                "no AWS credentials to sign API requests: configure a profile "
                "(--profile or AWS_PROFILE) or pass --api-key"
            )
        request = AWSRequest(method=method, url=url, headers=headers)
        SigV4Auth(
            credentials.get_frozen_credentials(), "execute-api", _region(url, self.target)
        ).add_auth(request)
        return dict(request.headers.items())

    # -- the routes ------------------------------------------------------------------------

    def import_record(
        self, kind: str, crm_id: str, org: str, *, asynchronous: bool = False
    ) -> Answer:
        headers = {"Prefer": "respond-async"} if asynchronous else {}
        return self.call(
            "POST", f"/v1/crm/{kind}/{crm_id}/import", {"organization_id": org}, headers
        )

    def get_record(self, kind: str, crm_id: str, org: str) -> Answer:
        return self.call("GET", f"/v1/imports/{kind}/{crm_id}", {"organization_id": org})

    def list_records(
        self,
        org: str,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Up to `limit` records, following `next_cursor` page by page."""
        records: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(records) < limit:
            params = {
                "organization_id": org,
                "status": status,
                "kind": kind,
                "limit": min(PAGE_SIZE, limit - len(records)),
                "cursor": cursor,
            }
            answer = self.call("GET", "/v1/imports", params)
            if answer.status != 200:
                raise CliError(answer.message)
            records.extend(answer.body.get("imports") or [])
            cursor = answer.body.get("next_cursor")
            if not cursor:
                break
        return records

    def check_organization(self, org: str) -> str | None:
        """None if the service serves `org`, else why not (one cheap listing call)."""
        answer = self.call("GET", "/v1/imports", {"organization_id": org, "limit": 1})
        return None if answer.status == 200 else answer.message


def _region(url: str, target: Target) -> str:
    """The region in an execute-api host ({id}.execute-api.{region}.amazonaws.com)."""
    host = urlsplit(url).hostname or ""
    parts = host.split(".")
    if len(parts) > 3 and parts[1] == "execute-api":
        return parts[2]
    return target.region


def dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, indent=2, ensure_ascii=False)
