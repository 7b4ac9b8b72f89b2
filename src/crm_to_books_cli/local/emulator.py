"""The AWS emulator: moto's server, in this process, on 127.0.0.1."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

import boto3
from botocore.config import Config
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
PARTITION = boto3.session.Session().get_partition_for_region(REGION)  # ARNs: arn:{PARTITION}:...
# Any credentials work against moto; these keep boto3 away from the developer's real ones.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


def forget_library_clients() -> None:
    """The runtime library makes its boto3 clients (and Powertools' secrets provider) once per
    process: after switching to another emulator, or into moto's in-process mock, they must
    be made again."""
    from crm_to_books import aws, tokens

    aws.client.cache_clear()
    tokens._secrets_provider.cache_clear()


class PortInUse(RuntimeError):
    def __init__(self, host: str, port: int, what: str, option: str) -> None:
        super().__init__(
            f"{host}:{port} is already in use, so the {what} cannot listen there. "
            f"Stop whatever holds it, or choose another port with {option}."
        )


def check_port_free(host: str, port: int, what: str, option: str) -> None:
    """Raise PortInUse if something listens on host:port (0 always works)."""
    if port == 0:
        return
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise PortInUse(host, port, what, option) from None


def _deliver_whole_events() -> None:
    # moto's EventBridge leaves `account` out of the events it delivers to SQS targets;
    # EventBridge delivers the whole event (and Powertools' EventBridgeModel requires it).
    from moto.events.utils import EventTemplateParser

    EventTemplateParser.DEFAULT_EVENT_INPUT_TEMPLATE = (
        '{"version": "0", "id": "<id>", "detail-type": "<detail-type>", "source": "<source>", '
        '"account": "<account>", "time": <time>, "region": "<region>", '
        '"resources": <resources>, "detail": <detail>}'
    )


class _SerializedDynamoDB:
    """moto's DynamoDB backend is not thread-safe (a transaction deep-copies tables while
    another request writes), but its server is threaded: DynamoDB requests take turns, like
    the single-item atomicity DynamoDB itself gives. Other services (SQS long polls) don't."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB"):
            with self._lock:
                return list(self._app(environ, start_response))
        return self._app(environ, start_response)


class _Server(ThreadedMotoServer):
    def _server_entry(self) -> None:
        app = _SerializedDynamoDB(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


class Emulator:
    """moto's threaded server; `client(service)` gives boto3 clients pointed at it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 4566) -> None:
        self.host = host
        self.port = port
        self._server: ThreadedMotoServer | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        check_port_free(self.host, self.port, "AWS emulator", "--aws-port or AWS_PORT")
        _deliver_whole_events()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request
        self._server = _Server(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self, service: str, **config: Any) -> Any:
        return boto3.session.Session().client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            config=Config(retries={"mode": "standard"}, **config),
        )
