"""The HTTP API: each request becomes an API Gateway REST API proxy event (payload 1.0) for the
function `topology` routes it to, and the function's answer becomes the HTTP response."""

from __future__ import annotations

import base64
import json
import logging
import re
import socketserver
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from crm_to_books_cli.local.emulator import ACCOUNT_ID, PortInUse
from crm_to_books_cli.local.runtime import Invocation, RuntimeStopped

Invoke = Callable[[str, dict[str, Any]], Invocation]  # (function name, event)
log = logging.getLogger(__name__)
API_ID = "local"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    resource: str  # API Gateway's syntax: /v1/imports/{kind}/{crm_id}, {proxy+} greedy
    function: str
    pattern: re.Pattern[str]

    @classmethod
    def of(cls, method: str, resource: str, function: str) -> Route:
        parts = []
        for segment in resource.strip("/").split("/"):
            name = segment[1:-1]
            if not segment.startswith("{"):
                parts.append(re.escape(segment))
            elif name.endswith("+"):
                parts.append(f"(?P<{name[:-1]}>.+)")
            else:
                parts.append(f"(?P<{name}>[^/]+)")
        return cls(method, resource, function, re.compile("/" + "/".join(parts) + "/?"))

    @property
    def specificity(self) -> tuple[int, ...]:
        """Sort key: API Gateway prefers literal segments, then {param}, then {greedy+}."""
        return tuple(
            2 if s.endswith("+}") else 1 if s.startswith("{") else 0
            for s in self.resource.strip("/").split("/")
        )

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in (method, "ANY"):
            return None
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        return {k.rstrip("+"): v for k, v in found.groupdict().items()}


def sort_routes(routes: Iterable[Route]) -> list[Route]:
    return sorted(routes, key=lambda r: r.specificity)


def proxy_event(
    route: Route,
    path_parameters: dict[str, str],
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    stage: str,
) -> dict[str, Any]:
    """The event API Gateway's Lambda proxy integration sends (REST API, payload 1.0)."""
    multi_headers: dict[str, list[str]] = {}
    for name, value in headers:
        multi_headers.setdefault(name, []).append(value)
    multi_query: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        multi_query.setdefault(name, []).append(value)
    try:
        text: str | None = body.decode() if body else None
        encoded = False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode(), True
    now = time.time()
    request_id = str(uuid.uuid4())
    user_agent = next((v for k, v in headers if k.lower() == "user-agent"), None)
    host = next((v for k, v in headers if k.lower() == "host"), "")
    return {
        "resource": route.resource,
        "path": path,
        "httpMethod": method,
        "headers": {k: v[-1] for k, v in multi_headers.items()} or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": uuid.uuid5(uuid.NAMESPACE_URL, route.resource).hex[:6],
            "deploymentId": "local",
            "resourcePath": route.resource,
            "httpMethod": method,
            "extendedRequestId": uuid.uuid4().hex[:16],
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "path": f"/{stage}{path}",
            "accountId": ACCOUNT_ID,
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": host.split(".")[0].split(":")[0],
            "requestTimeEpoch": int(now * 1000),
            "requestId": request_id,
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "sourceIp": source_ip,
                "principalOrgId": None,
                "accessKey": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": user_agent,
                "user": None,
            },
            "domainName": host,
            "apiId": API_ID,
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @classmethod
    def json(cls, status: int, body: dict[str, Any], **headers: str) -> HttpResponse:
        pairs = [("Content-Type", "application/json"), *headers.items()]
        return cls(status, pairs, json.dumps(body).encode())


INTERNAL_ERROR = HttpResponse.json(502, {"message": "Internal server error"})
_LAMBDA_INVOKE = re.compile(r"/2015-03-31/functions/(?P<name>[^/]+)/invocations")
MISSING_TOKEN = HttpResponse.json(
    403,
    {"message": "Missing Authentication Token"},
    **{"x-amzn-ErrorType": "MissingAuthenticationTokenException"},
)


def proxy_response(invocation: Invocation) -> HttpResponse:
    """The HTTP response for a proxy integration's answer; 502 when it is not one."""
    result = invocation.result
    if not invocation.ok or not isinstance(result, dict):
        return INTERNAL_ERROR
    status = result.get("statusCode")
    body = result.get("body")
    if not isinstance(status, int) or not (body is None or isinstance(body, str)):
        return INTERNAL_ERROR
    # API Gateway merges both header maps; multiValueHeaders wins for a name set in both.
    multi = {k: [str(v) for v in vs] for k, vs in (result.get("multiValueHeaders") or {}).items()}
    single = {k: str(v) for k, v in (result.get("headers") or {}).items() if k not in multi}
    pairs = [*single.items(), *((k, v) for k, vs in multi.items() for v in vs)]
    if not any(k.lower() == "content-type" for k, _ in pairs):
        pairs.append(("Content-Type", "application/json"))
    pairs.append(("x-amzn-RequestId", invocation.request_id))
    raw = (body or "").encode()
    if result.get("isBase64Encoded") and body:
        raw = base64.b64decode(body)
    return HttpResponse(status, pairs, raw)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer's own looks the host's name up in DNS, which can take seconds.
        socketserver.TCPServer.server_bind(self)
        host, self.server_port = self.server_address[:2]
        self.server_name = str(host)


class ApiGateway:
    """A threaded HTTP server on host:port routing to functions through `invoke`."""

    def __init__(
        self,
        routes: Iterable[Route],
        invoke: Invoke,
        host: str,
        port: int,
        stage: str,
        invoke_api: bool = False,
    ) -> None:
        """`invoke_api`: also serve Lambda's Invoke API (`POST /2015-03-31/functions/NAME/
        invocations`), so `aws lambda invoke --endpoint-url <this>` (and the CLI's `sync`
        and `watch`) reach the local functions as they reach deployed ones."""
        self.routes = sort_routes(routes)
        self.invoke_api = invoke_api
        self.host, self.port, self.stage = host, port, stage
        self._invoke = invoke
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def handle_one_request(self) -> None:
                # Any method: API Gateway, not http.server, decides what is routed.
                self.raw_requestline = self.rfile.readline(65537)
                if not self.raw_requestline or not self.parse_request():
                    return
                gateway._serve(self)
                self.wfile.flush()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # _serve logs one line per request

        try:
            self._server = _Server((self.host, self.port), Handler)
        except OSError:
            raise PortInUse(self.host, self.port, "HTTP API", "--api-port or API_PORT") from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _forwarded(self, request: BaseHTTPRequestHandler) -> list[tuple[str, str]]:
        """The request's headers plus those API Gateway adds."""
        headers = list(request.headers.items())
        present = {name.lower() for name, _ in headers}
        added = {
            "X-Forwarded-For": request.client_address[0],
            "X-Forwarded-Port": str(self.port),
            "X-Forwarded-Proto": "http",
            "X-Amzn-Trace-Id": f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}",
        }
        return headers + [(k, v) for k, v in added.items() if k.lower() not in present]

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        url = urlsplit(request.path)
        # Decoded once, then matched, as API Gateway does: an encoded "/" splits a segment, and
        # a path value is not decoded again ("%2541" arrives as "%41").
        path = unquote(url.path)
        lambda_call = _LAMBDA_INVOKE.fullmatch(path) if self.invoke_api else None
        if lambda_call is not None and request.command == "POST":
            length = int(request.headers.get("Content-Length") or 0)
            payload = request.rfile.read(length) if length else b""
            self._respond(request, self._invoke_function(lambda_call["name"], payload), started)
            return
        # API Gateway's own URL carries the stage (`/prod/v1/...`), and so does every
        # `Location` the API hands out: serve both forms, as a custom domain and the default do.
        stage_prefix = f"/{self.stage}/"
        if path.startswith(stage_prefix):
            path = path[len(stage_prefix) - 1 :]
        route, params = next(
            ((r, p) for r in self.routes if (p := r.match(request.command, path)) is not None),
            (None, None),
        )
        if route is None or params is None:
            response, function = MISSING_TOKEN, "-"
        else:
            length = int(request.headers.get("Content-Length") or 0)
            event = proxy_event(
                route,
                params,
                request.command,
                path,
                url.query,
                self._forwarded(request),
                request.rfile.read(length) if length else b"",
                request.client_address[0],
                self.stage,
            )
            function = route.function
            try:
                response = proxy_response(self._invoke(function, event))
            except RuntimeStopped:
                response = HttpResponse.json(503, {"message": "Service Unavailable"})
        self._respond(request, response, started, function)

    def _invoke_function(self, name: str, payload: bytes) -> HttpResponse:
        """Lambda's Invoke API (RequestResponse): the result, or the error with
        `X-Amz-Function-Error: Unhandled`, as Lambda answers."""
        name = name.rsplit(":function:", 1)[-1]
        try:
            event = json.loads(payload or b"{}")
            invocation = self._invoke(name, event)
        except KeyError:
            return HttpResponse.json(
                404,
                {"Type": "User", "message": f"Function not found: {name}"},
                **{"x-amzn-ErrorType": "ResourceNotFoundException"},
            )
        except ValueError:
            return HttpResponse.json(400, {"Type": "User", "message": "payload: not JSON"})
        except RuntimeStopped:
            return HttpResponse.json(503, {"message": "Service Unavailable"})
        if invocation.ok:
            body = json.dumps(invocation.result).encode()
            return HttpResponse(200, [("Content-Type", "application/json")], body)
        return HttpResponse(
            200,
            [("Content-Type", "application/json"), ("X-Amz-Function-Error", "Unhandled")],
            json.dumps(invocation.error).encode(),
        )

    def _respond(
        self,
        request: BaseHTTPRequestHandler,
        response: HttpResponse,
        started: float,
        function: str = "lambda-invoke",
    ) -> None:
        request.send_response(response.status)
        for name, value in response.headers:
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(response.body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(response.body)
        elapsed = (time.monotonic() - started) * 1000
        log.info(
            "%s %s -> %s (%s, %.0f ms)",
            request.command,
            request.path,
            response.status,
            function,
            elapsed,
        )
