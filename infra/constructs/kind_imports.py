"""Everything one import kind needs: queue, DLQ, function, event source, API route, alarms.

Instantiated once per kind from `topology.IMPORT_FUNCTIONS` (the entities table).
"""

from __future__ import annotations

from collections.abc import Iterable

from aws_cdk import Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from crm_to_books import topology
from crm_to_books.topology import FunctionSpec
from infra.constructs.api import Api
from infra.constructs.connections import Connections
from infra.constructs.events import Events
from infra.constructs.lambda_defaults import LambdaDefaults, ServiceFunction
from infra.constructs.observability import Observability
from infra.constructs.storage import Storage


class KindImports(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        spec: FunctionSpec,
        defaults: LambdaDefaults,
        storage: Storage,
        connections: Connections,
        connections_used: Iterable[str],
        events: Events,
        api: Api,
        observability: Observability,
    ) -> None:
        super().__init__(scope, id)
        if spec.kind is None:
            raise ValueError(f"{spec.name} is not an import function")
        kind = spec.kind
        names = defaults.names
        if topology.QUEUE_VISIBILITY_TIMEOUT_SECONDS < 6 * spec.timeout_seconds:
            raise ValueError(f"{spec.name}: queue visibility must be >= 6x the function timeout")
        self.dlq = sqs.Queue(
            self,
            "Dlq",
            queue_name=names.dlq(kind),
            retention_period=Duration.days(topology.DLQ_RETENTION_DAYS),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            queue_name=names.queue(kind),
            visibility_timeout=Duration.seconds(topology.QUEUE_VISIBILITY_TIMEOUT_SECONDS),
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            dead_letter_queue=sqs.DeadLetterQueue(
                queue=self.dlq, max_receive_count=topology.MAX_RECEIVE_COUNT
            ),
        )
        self.handler = ServiceFunction(
            self, "Importer", spec=spec, defaults=defaults, queue_urls={kind: self.queue.queue_url}
        )
        self.function = self.handler.function
        role = self.handler.role
        storage.grant_ledger_read_write(role)
        storage.grant_state_read_write(role)
        connections.grant_read(role, connections_used)
        events.bus.grant_put_events_to(role)
        # Async HTTP imports enqueue; throttled messages are delayed by changing visibility.
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["sqs:SendMessage", "sqs:ChangeMessageVisibility"],
                resources=[self.queue.queue_arn],
            )
        )
        self.function.add_event_source(
            sources.SqsEventSource(
                self.queue,
                batch_size=topology.BATCH_SIZE,
                max_batching_window=Duration.seconds(topology.MAX_BATCHING_WINDOW_SECONDS),
                report_batch_item_failures=True,
                max_concurrency=topology.QUEUE_MAXIMUM_CONCURRENCY,
            )
        )
        for method, path in spec.http_routes:
            api.route(method, path, self.function)
        events.route_imports(kind, self.queue, self.dlq)
        observability.watch_dlq(kind, self.dlq)
        observability.watch_function(self.function, spec.name)
