"""Names and settings of every AWS resource, shared by the CDK app and the local stack.

One source of truth: `infra/` builds these resources in AWS, the local stack creates the same
ones in the emulator. Handlers never read this module for names: they get them from the
environment (see `settings.py`), which both the stack and the local stack fill from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crm_to_books.entities import KINDS

DEFAULT_PREFIX = "crm-to-books"

# SQS and Lambda settings for the per-kind import queues.
FUNCTION_TIMEOUT_SECONDS = 30
# The functions mostly wait on Zoho: 256 MB is the cheapest size that holds a container's measured
# peak with room (bench cost, docs/benchmarks.md); 128 MB would leave too little.
FUNCTION_MEMORY_MB = 256
QUEUE_VISIBILITY_TIMEOUT_SECONDS = 6 * FUNCTION_TIMEOUT_SECONDS  # AWS: at least 6x the timeout
MAX_RECEIVE_COUNT = 8  # a throttled import is retried many times before the DLQ
BATCH_SIZE = 10
MAX_BATCHING_WINDOW_SECONDS = 2
# An SQS event source's MaximumConcurrency (AWS allows 2 to 1000), per kind. The stack takes it
# from its configuration (`queue_concurrency`); this default keeps the four kinds' pollers (8)
# within the 10 concurrent executions a new AWS account starts with. The rate limiter still caps
# Zoho's concurrency per organization whatever this is.
QUEUE_CONCURRENCY_MINIMUM = 2
QUEUE_CONCURRENCY_MAXIMUM = 1000
QUEUE_MAXIMUM_CONCURRENCY = 2
DLQ_RETENTION_DAYS = 14

# EventBridge
EVENT_SOURCE = "crm-to-books"
DETAIL_IMPORT_REQUESTED = "Import Requested"
DETAIL_IMPORT_SUCCEEDED = "Import Succeeded"
DETAIL_IMPORT_FAILED = "Import Failed"

# API Gateway REST API
API_STAGE = "prod"

# Scheduled jobs
TOKEN_KEEPER_RATE_MINUTES = 5  # cheap (one GetItem); short, so tokens live most of their hour
REDRIVE_RATE_MINUTES = 5
# Zoho CRM notification channels live at most a day (one hour when Zoho does not take the
# expiry asked for): each is renewed well before it ends, and re-enabled if it lapsed.
CHANNEL_RENEW_RATE_MINUTES = 30
SWEEP_TIMEOUT_SECONDS = 300  # a sweep stops starting pages in time to save its checkpoint

# Zoho CRM notifications (the one route without IAM auth: verified by the channel's token)
HOOK_PATH = "/v1/hooks/zoho-crm"
HOOK_MAX_BODY_BYTES = 256 * 1024
HOOK_MAX_IDS = 5000
HOOK_THROTTLING_RATE_LIMIT = 10  # requests per second, this route alone
HOOK_THROTTLING_BURST_LIMIT = 50

# Metrics (Powertools EMF, dimension service=SERVICE_NAME only): the stack's alarms and
# dashboard watch exactly these names.
SERVICE_NAME = "crm-to-books"
METRICS_NAMESPACE = "CrmToBooks"
METRIC_IMPORT_SUCCEEDED = "ImportSucceeded"
METRIC_IMPORT_FAILED = "ImportFailed"
METRIC_ZOHO_LATENCY = "ZohoLatency"
METRIC_ZOHO_THROTTLED = "ZohoThrottled"
METRIC_TOKEN_REFRESH_FAILED = "TokenRefreshFailed"  # noqa: S105 (a metric name)
METRIC_TOKEN_REFRESHED = "TokenRefreshed"  # noqa: S105 (a metric name)
# Imports by kind and outcome (dimensions service, kind, outcome): 12 metrics at most.
METRIC_IMPORTS = "Imports"
# CRM sweeps, channels and notifications
METRIC_SWEEP_QUEUED = "CrmSweepQueued"
METRIC_SWEEP_FAILED = "CrmSweepFailed"  # a sweep that stopped on an error (not at its limits)
METRIC_CHANNELS_LAPSED = "CrmChannelsLapsed"
METRIC_CHANNEL_RENEW_FAILED = "CrmChannelRenewFailed"
METRIC_HOOK_QUEUED = "CrmHookQueued"
METRIC_HOOK_IGNORED = "CrmHookIgnored"
METRIC_HOOK_REFUSED = "CrmHookRefused"  # 4xx: bad token, unknown channel, malformed body

# Key schema shared by the stack and the emulator.
LEDGER_PARTITION_KEY = "pk"
LEDGER_SORT_KEY = "sk"
LEDGER_STATUS_INDEX = "by_status"
LEDGER_STATUS_INDEX_PARTITION_KEY = "org_status"
LEDGER_STATUS_INDEX_SORT_KEY = "updated_at"
STATE_PARTITION_KEY = "pk"


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A DynamoDB table's keys (strings) and global secondary indexes (all attributes
    projected): the one definition the stack, the local stack, tests and benchmarks build."""

    partition_key: str
    sort_key: str | None = None
    indexes: tuple[tuple[str, str, str], ...] = ()  # (name, partition key, sort key)

    def create_table_request(self, name: str) -> dict[str, object]:
        """boto3 `create_table` arguments for this table, on demand."""

        def keys(partition: str, sort: str | None) -> list[dict[str, str]]:
            schema = [{"AttributeName": partition, "KeyType": "HASH"}]
            return schema + ([{"AttributeName": sort, "KeyType": "RANGE"}] if sort else [])

        names = [self.partition_key, *([self.sort_key] if self.sort_key else [])]
        names += [k for _, p, s in self.indexes for k in (p, s) if k not in names]
        request: dict[str, object] = {
            "TableName": name,
            "BillingMode": "PAY_PER_REQUEST",
            "KeySchema": keys(self.partition_key, self.sort_key),
            "AttributeDefinitions": [{"AttributeName": n, "AttributeType": "S"} for n in names],
        }
        if self.indexes:
            request["GlobalSecondaryIndexes"] = [
                {"IndexName": i, "KeySchema": keys(p, s), "Projection": {"ProjectionType": "ALL"}}
                for i, p, s in self.indexes
            ]
        return request


LEDGER_TABLE = TableSpec(
    LEDGER_PARTITION_KEY,
    LEDGER_SORT_KEY,
    ((LEDGER_STATUS_INDEX, LEDGER_STATUS_INDEX_PARTITION_KEY, LEDGER_STATUS_INDEX_SORT_KEY),),
)
STATE_TABLE = TableSpec(STATE_PARTITION_KEY)

# Every function's entry point: <module>.<function> inside its folder under functions/.
HANDLER = "handler.handler"


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One Lambda function: where its handler lives and what triggers it."""

    name: str  # logical name, also the folder under functions/
    handler_dir: str  # folder under functions/ holding handler.py
    kind: str | None = None  # the import kind, for per-kind functions
    description: str = ""
    http_routes: tuple[tuple[str, str], ...] = ()  # (method, path) in API Gateway's syntax
    environment: dict[str, str] = field(default_factory=dict)
    timeout_seconds: int = FUNCTION_TIMEOUT_SECONDS
    memory_mb: int = FUNCTION_MEMORY_MB


@dataclass(frozen=True, slots=True)
class Names:
    """The physical names of the stack's resources for one prefix (e.g. a stage)."""

    prefix: str = DEFAULT_PREFIX

    def queue(self, kind: str) -> str:
        return f"{self.prefix}-{kind}-imports"

    def dlq(self, kind: str) -> str:
        return f"{self.prefix}-{kind}-imports-dlq"

    @property
    def ledger_table(self) -> str:
        return f"{self.prefix}-ledger"

    @property
    def state_table(self) -> str:
        return f"{self.prefix}-state"

    @property
    def tables(self) -> dict[str, TableSpec]:
        """Every table of the stack by its name."""
        return {self.ledger_table: LEDGER_TABLE, self.state_table: STATE_TABLE}

    @property
    def event_bus(self) -> str:
        return f"{self.prefix}-bus"

    def connection_secret(self, connection: str) -> str:
        return f"{self.prefix}/connections/{connection}"

    @property
    def channel_secret_prefix(self) -> str:
        """Each Zoho CRM notification channel's token is the secret `<this><channel id>`."""
        return f"{self.prefix}/channels/"

    def channel_secret(self, channel_id: str) -> str:
        return f"{self.channel_secret_prefix}{channel_id}"

    @property
    def api_name(self) -> str:
        return f"{self.prefix}-api"

    def function(self, spec: FunctionSpec) -> str:
        return f"{self.prefix}-{spec.name}"


def import_requested_pattern(kind: str) -> dict[str, list[str] | dict[str, list[str]]]:
    """The bus rule's pattern routing `Import Requested` events of `kind` to its queue."""
    return {"detail-type": [DETAIL_IMPORT_REQUESTED], "detail": {"kind": [kind]}}


def import_function(kind: str) -> FunctionSpec:
    return FunctionSpec(
        name=f"{kind}-import",
        handler_dir="importer",
        kind=kind,
        description=f"Imports Zoho CRM {kind} records into Zoho Books",
        http_routes=(("POST", f"/v1/crm/{kind}/{{crm_id}}/import"),),
        environment={"IMPORT_KIND": kind},
    )


IMPORT_FUNCTIONS: tuple[FunctionSpec, ...] = tuple(import_function(k) for k in KINDS)

STATUS_API = FunctionSpec(
    name="status-api",
    handler_dir="status_api",
    description="Import status, health and the OpenAPI document",
    http_routes=(
        ("GET", "/v1/imports"),
        ("GET", "/v1/imports/{kind}/{crm_id}"),
        ("GET", "/v1/health"),
        ("GET", "/v1/openapi.json"),
    ),
)

TOKEN_KEEPER = FunctionSpec(
    name="token-keeper",
    handler_dir="token_keeper",
    description="Keeps each Zoho connection's access token fresh; detects revoked refresh tokens",
)

REDRIVE = FunctionSpec(
    name="redrive",
    handler_dir="redrive",
    description="Re-enqueues parked imports whose time has come",
)

SWEEP = FunctionSpec(
    name="sweep",
    handler_dir="sweep",
    description="Sweeps Zoho CRM for changed records and queues their imports; keeps the "
    "CRM notification channels",
    timeout_seconds=SWEEP_TIMEOUT_SECONDS,
)

CRM_HOOKS = FunctionSpec(
    name="crm-hooks",
    handler_dir="crm_hooks",
    description="Receives Zoho CRM notifications and queues their imports",
    http_routes=(("POST", HOOK_PATH),),
)

ALL_FUNCTIONS: tuple[FunctionSpec, ...] = (
    *IMPORT_FUNCTIONS,
    STATUS_API,
    TOKEN_KEEPER,
    REDRIVE,
    SWEEP,
    CRM_HOOKS,
)
# Functions that queue imports of any kind (told every kind queue's URL).
EVERY_QUEUE_FUNCTIONS: tuple[FunctionSpec, ...] = (REDRIVE, SWEEP, CRM_HOOKS)
