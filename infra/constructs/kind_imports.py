"""Everything one import kind needs: queue, DLQ, function, event source, API route, alarms.

Instantiated once per kind from `topology.IMPORT_FUNCTIONS` (the entities table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import Duration
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from crm_to_books import topology
from crm_to_books.access import Resource
from crm_to_books.topology import FunctionSpec
from infra.constructs.api import Api
from infra.constructs.events import Events
from infra.constructs.grants import grant_calls
from infra.constructs.lambda_defaults import LambdaDefaults, ServiceFunction
from infra.constructs.observability import Observability
from infra.constructs.removal import KEEP_NAMED


class KindImports(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        spec: FunctionSpec,
        defaults: LambdaDefaults,
        arns: Mapping[Resource, Sequence[str]],
        indexes: Mapping[Resource, Sequence[str]],
        queue_concurrency: int,
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
            removal_policy=KEEP_NAMED,  # what waits in it outlives the stack
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
            removal_policy=KEEP_NAMED,
        )
        self.handler = ServiceFunction(
            self, "Importer", spec=spec, defaults=defaults, queue_urls={kind: self.queue.queue_url}
        )
        self.function = self.handler.function
        own = {**arns, Resource.OWN_QUEUE: [self.queue.queue_arn]}
        grant_calls(self.handler.role, spec, own, indexes)
        self.function.add_event_source(
            sources.SqsEventSource(
                self.queue,
                batch_size=topology.BATCH_SIZE,
                max_batching_window=Duration.seconds(topology.MAX_BATCHING_WINDOW_SECONDS),
                report_batch_item_failures=True,
                max_concurrency=queue_concurrency,
            )
        )
        for method, path in spec.http_routes:
            api.route(method, path, self.function)
        events.route_imports(kind, self.queue, self.dlq)
        observability.watch_dlq(kind, self.dlq)
        observability.watch_function(self.function, spec.name)
