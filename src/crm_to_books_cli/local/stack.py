"""The local stack: the service's functions wired the way AWS wires them, on this machine.

    with LocalStack(api_port=0, aws_port=0) as stack:
        requests.post(f"{stack.api_url}/v1/crm/account/{crm_id}/import", params=...)
        stack.client("sqs").send_message(QueueUrl=stack.queue_urls["account"], ...)

Everything comes from `crm_to_books.topology`, the names and settings `infra/` deploys.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from crm_to_books import topology
from crm_to_books.settings import Organization, Settings
from crm_to_books_cli.local.apigw import ApiGateway, Route
from crm_to_books_cli.local.emulator import (
    ACCOUNT_ID,
    CREDENTIALS,
    PARTITION,
    REGION,
    Emulator,
    check_port_free,
)
from crm_to_books_cli.local.iam import LocalIam
from crm_to_books_cli.local.provision import (
    Resources,
    connection_secrets,
    provision,
    store_connection_secret,
)
from crm_to_books_cli.local.runtime import FunctionConfig, Invocation, LogSink, Runtime
from crm_to_books_cli.local.schedules import Schedule, Scheduler
from crm_to_books_cli.local.sqs_source import SqsEventSource
from crm_to_books_cli.local.zoho import Sandbox, ZohoAccount

REPO_ROOT = Path(__file__).resolve().parents[3]
CONNECTION = "default"
SCHEDULES: tuple[tuple[topology.FunctionSpec, int], ...] = (
    (topology.TOKEN_KEEPER, topology.TOKEN_KEEPER_RATE_MINUTES),
    (topology.REDRIVE, topology.REDRIVE_RATE_MINUTES),
)
# Schedules with an input of their own: (name, function, minutes, input).
RENEWAL = "channel-renewal"
INPUT_SCHEDULES: tuple[tuple[str, topology.FunctionSpec, int, dict[str, str]], ...] = (
    (RENEWAL, topology.SWEEP, topology.CHANNEL_RENEW_RATE_MINUTES, {"action": "renew_channels"}),
)
log = logging.getLogger(__name__)


_print_lock = threading.Lock()


def print_line(function: str, line: str) -> None:
    """The default log sink: each container line on stdout, tagged with its function."""
    with _print_lock:
        print(f"[{function}] {line}", flush=True)


class LocalStack:
    """The AWS emulator, the Zoho sandbox, the functions, their triggers; `start()`/`stop()`."""

    def __init__(
        self,
        *,
        prefix: str = topology.DEFAULT_PREFIX,
        host: str = "127.0.0.1",
        api_port: int = 3000,
        aws_port: int = 4566,
        functions_root: Path = REPO_ROOT / "functions",
        layer_dirs: Sequence[Path] = (REPO_ROOT / "layers" / "core" / "python",),
        zoho: ZohoAccount | None = None,
        sandbox: Sandbox | None = None,
        visibility_timeout: int = topology.QUEUE_VISIBILITY_TIMEOUT_SECONDS,
        max_receive_count: int = topology.MAX_RECEIVE_COUNT,
        batching_window: float = topology.MAX_BATCHING_WINDOW_SECONDS,
        queue_concurrency: int = topology.QUEUE_MAXIMUM_CONCURRENCY,
        max_containers: int = 10,
        schedule_seconds: Mapping[str, float] | None = None,
        settings: Mapping[str, Any] | None = None,
        environment: Mapping[str, str] | None = None,
        log_sink: LogSink | None = None,
        iam: bool = True,
        iam_record: Path | Literal[False] | None = None,
    ) -> None:
        """`zoho`: a real (or Zoho-compatible) account; else `sandbox` (not started), else a
        default `ZohoSandbox` on a free port. `schedule_seconds` overrides a schedule's period
        by function name ("token-keeper", "redrive"); `settings` overrides `Settings` fields;
        `environment` adds variables to every container. `iam`: each function's calls are
        checked against its role from the synthesized template (`local/iam.py`); `iam_record`:
        where to append the calls made (default: `CRM_TO_BOOKS_IAM_RECORD`; False: nowhere)."""
        self.names = topology.Names(prefix)
        self.host = host
        self.emulator = Emulator(host, aws_port)
        self._api_port = api_port
        self.functions_root = Path(functions_root).resolve()
        self.layer_dirs = tuple(Path(d).resolve() for d in layer_dirs)
        self.zoho, self.sandbox = zoho, sandbox
        self.visibility_timeout, self.max_receive_count = visibility_timeout, max_receive_count
        self.batching_window, self.queue_concurrency = batching_window, queue_concurrency
        self.max_containers = max_containers
        self.schedule_seconds = (
            {spec.name: float(minutes * 60) for spec, minutes in SCHEDULES}
            | {name: float(minutes * 60) for name, _, minutes, _ in INPUT_SCHEDULES}
            | dict(schedule_seconds or {})
        )
        self._settings_overrides = dict(settings or {})
        self._environment = dict(environment or {})
        self._log_sink = log_sink or print_line
        self._enforce_iam, self._iam_record = iam, iam_record
        self.iam: LocalIam | None = None
        self._started: list[Any] = []  # what stop() stops, in reverse
        self.resources: Resources | None = None
        self.settings: Settings | None = None
        self.runtime: Runtime | None = None
        self.api: ApiGateway | None = None
        self.sources: dict[str, SqsEventSource] = {}
        self.scheduler: Scheduler | None = None
        self.startup_seconds = 0.0

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Self:
        started = time.monotonic()
        check_port_free(self.host, self.emulator.port, "AWS emulator", "--aws-port or AWS_PORT")
        check_port_free(self.host, self._api_port, "HTTP API", "--api-port or API_PORT")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        log.info("local stack ready in %.1f s", self.startup_seconds)
        return self

    def _start(self) -> None:
        self.zoho = self._zoho()
        organizations, connections = self._accounts()
        if self._enforce_iam:  # its synthesis (if not cached) runs while the emulator starts
            self.iam = LocalIam(self.names, organizations, list(connections), self._iam_record)
            self._started.append(self.iam)
        self.emulator.start()
        self._started.append(self.emulator)
        self.resources = provision(
            self.emulator,
            self.names,
            visibility_timeout=self.visibility_timeout,
            max_receive_count=self.max_receive_count,
        )
        secret_arns = connection_secrets(self.emulator, connections.values())
        secret_id = self.names.connection_secret(CONNECTION)
        store_connection_secret(self.emulator, secret_id, self.zoho.secret())
        self.settings = Settings.model_validate(
            {
                "ledger_table": self.names.ledger_table,
                "state_table": self.names.state_table,
                "event_bus_name": self.names.event_bus,
                "queue_urls": self.resources.queue_urls,
                "channel_secret_prefix": self.names.channel_secret_prefix,
                **self._settings_overrides,
                "organizations": organizations,
                "connections": connections,
            }
        )
        if self.iam is not None:
            self.iam.start(secret_arns)
        self.runtime = Runtime(
            [self._function_config(spec) for spec in topology.ALL_FUNCTIONS], self._log_sink
        )
        self._started.append(self.runtime)
        routes = [
            Route.of(method, path, self.names.function(spec))
            for spec in topology.ALL_FUNCTIONS
            for method, path in spec.http_routes
        ]
        self.api = ApiGateway(
            routes,
            self.runtime.invoke,
            self.host,
            self._api_port,
            topology.API_STAGE,
            invoke_api=True,
        )
        self.api.start()
        self._started.append(self.api)
        for spec in topology.IMPORT_FUNCTIONS:
            assert spec.kind is not None
            # Lambda's poller reads the queue with the function's role.
            sqs = self.emulator.client("sqs", max_pool_connections=2 * self.queue_concurrency + 2)
            if self.iam is not None:
                self.iam.attach(sqs, self.names.function(spec))
            source = SqsEventSource(
                sqs,
                self.resources.queue_urls[spec.kind],
                self.resources.queue_arns[spec.kind],
                self.names.function(spec),
                self.runtime.invoke,
                batch_size=topology.BATCH_SIZE,
                batching_window=self.batching_window,
                concurrency=self.queue_concurrency,
            )
            source.start()
            self.sources[spec.kind] = source
            self._started.append(source)
        self.scheduler = Scheduler(
            [
                Schedule(
                    spec.name,
                    f"{self.names.prefix}-{spec.name}",
                    self.names.function(spec),
                    self.schedule_seconds[spec.name],
                )
                for spec, _ in SCHEDULES
            ]
            + [
                Schedule(
                    name,
                    f"{self.names.prefix}-{name}",
                    self.names.function(spec),
                    self.schedule_seconds[name],
                    input=dict(event),
                )
                for name, spec, _, event in INPUT_SCHEDULES
            ],
            self.runtime.invoke,
        )
        self.scheduler.start()
        self._started.append(self.scheduler)

    def _accounts(self) -> tuple[dict[str, Organization], dict[str, str]]:
        """The organizations and connections (name -> secret id) the functions are given:
        the Zoho account's organizations on one connection, unless `settings` says otherwise."""
        assert self.zoho is not None
        overrides = self._settings_overrides
        organizations = {
            org: Organization.model_validate(value)
            for org, value in overrides.get(
                "organizations",
                {org: Organization(connection=CONNECTION) for org in self.zoho.organizations},
            ).items()
        }
        connections = dict(
            overrides.get("connections", {CONNECTION: self.names.connection_secret(CONNECTION)})
        )
        return organizations, connections

    def _zoho(self) -> ZohoAccount:
        if self.zoho is not None:
            return self.zoho
        if self.sandbox is None:
            from crm_to_books_cli.sandbox import ZohoSandbox

            self.sandbox = ZohoSandbox(port=0, host=self.host)
        self.sandbox.start()
        self._started.append(self.sandbox)
        return ZohoAccount.of_sandbox(self.sandbox)

    def stop(self) -> None:
        """Stop what started, newest first: no request, message or container is left behind.

        Event sources stop receiving before the runtime stops; batches in flight then fail and
        their messages return to the queue after the visibility timeout, as on Lambda."""
        for source in self.sources.values():
            source.stop_receiving()  # all at once: each may be in a long poll
        while self._started:
            part = self._started.pop()
            try:
                part.stop()
            except Exception:
                log.exception("stopping %s failed", type(part).__name__)
            if part is self.runtime:
                for source in self.sources.values():
                    source.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what a client needs ---------------------------------------------------------------

    @property
    def api_url(self) -> str:
        assert self.api is not None, "start() the stack first"
        return self.api.url

    @property
    def aws_endpoint(self) -> str:
        return self.emulator.endpoint

    @property
    def queue_urls(self) -> dict[str, str]:
        assert self.resources is not None, "start() the stack first"
        return self.resources.queue_urls

    @property
    def dlq_urls(self) -> dict[str, str]:
        assert self.resources is not None, "start() the stack first"
        return self.resources.dlq_urls

    def client(self, service: str, **config: Any) -> Any:
        """A boto3 client for the emulator."""
        return self.emulator.client(service, **config)

    def function_name(self, name: str) -> str:
        """The physical name of a function given its logical name ("account-import")."""
        for spec in topology.ALL_FUNCTIONS:
            if name in (spec.name, self.names.function(spec)):
                return self.names.function(spec)
        raise KeyError(f"no function {name!r}")

    def invoke(self, function: str, event: Any) -> Invocation:
        """Invoke a function directly and wait (like `aws lambda invoke`)."""
        assert self.runtime is not None, "start() the stack first"
        return self.runtime.invoke(self.function_name(function), event)

    def fire(self, schedule: str) -> Invocation:
        """Fire a schedule now ("token-keeper", "redrive", "channel-renewal") and wait for the
        invocation."""
        assert self.scheduler is not None, "start() the stack first"
        return self.scheduler.fire(schedule)

    def container_pids(self) -> list[int]:
        return self.runtime.pids() if self.runtime else []

    # -- wiring ----------------------------------------------------------------------------

    def _queue_urls(self, spec: topology.FunctionSpec) -> dict[str, str]:
        """The queues a function is told about, as infra/stack.py wires them: an import
        function its own kind's, the re-drive job, the sweep and the CRM hook every kind's, the
        others none."""
        assert self.resources is not None
        if spec.kind is not None:
            return {spec.kind: self.resources.queue_urls[spec.kind]}
        every = spec in topology.EVERY_QUEUE_FUNCTIONS
        return dict(self.resources.queue_urls) if every else {}

    def _function_config(self, spec: topology.FunctionSpec) -> FunctionConfig:
        assert self.settings is not None
        name = self.names.function(spec)
        settings = self.settings.model_copy(update={"queue_urls": self._queue_urls(spec)})
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            **settings.to_env(),
            **spec.environment,
            "AWS_ENDPOINT_URL": self.emulator.endpoint,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            **CREDENTIALS,
            # Keep the developer's own AWS profile and credentials out of the containers.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "POWERTOOLS_SERVICE_NAME": topology.SERVICE_NAME,
            "POWERTOOLS_METRICS_NAMESPACE": topology.METRICS_NAMESPACE,
            "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon here
            **(self.iam.environment(name) if self.iam is not None else {}),
            **self._environment,
        }
        return FunctionConfig(
            name=name,
            code_dir=self.functions_root / spec.handler_dir,
            layer_dirs=self.layer_dirs,
            environment=environment,
            timeout_seconds=spec.timeout_seconds,
            memory_mb=spec.memory_mb,
            arn=f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT_ID}:function:{name}",
            handler=topology.HANDLER,
            max_containers=self.max_containers,
        )
