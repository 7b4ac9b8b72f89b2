"""The crm-to-books stack: composes one construct per concern."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import ArnFormat, CfnOutput, Stack, Tags
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from crm_to_books import topology
from crm_to_books.access import Resource
from crm_to_books.settings import Settings
from crm_to_books.topology import Names
from infra.config import ServiceConfig
from infra.constructs.api import Api
from infra.constructs.connections import Connections
from infra.constructs.events import Events
from infra.constructs.grants import grant_calls
from infra.constructs.kind_imports import KindImports
from infra.constructs.lambda_defaults import (
    FUNCTIONS_ROOT,
    LambdaDefaults,
    ServiceFunction,
    retention,
)
from infra.constructs.layer import CoreLayer
from infra.constructs.nag import acknowledge, as_nag_sees_it
from infra.constructs.observability import Observability
from infra.constructs.scheduling import Scheduling
from infra.constructs.storage import Storage

# Config `tracing`: Lambda's X-Ray mode for every function.
_TRACING = {"active": lambda_.Tracing.ACTIVE, "pass_through": lambda_.Tracing.PASS_THROUGH}


class CrmToBooksStack(Stack):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: ServiceConfig,
        layer_directory: Path,
        layer_digest: str,
        functions_root: Path = FUNCTIONS_ROOT,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, description="crm-to-books: Zoho CRM to Zoho Books", **kwargs)
        Tags.of(self).add("service", topology.SERVICE_NAME)
        Tags.of(self).add("stage", config.stage)
        names = Names(config.prefix)
        log_retention = retention(config.log_retention_days)

        storage = Storage(self, "Storage", names=names, ledger_stream=config.ledger_stream)
        connections = Connections(self, "Connections", names=names, connections=config.connections)
        layer = CoreLayer(self, "CoreLayer", directory=layer_directory, digest=layer_digest)
        events = Events(self, "Events", names=names)
        observability = Observability(
            self, "Observability", prefix=config.prefix, alarm_email=config.alarm_email
        )
        api = Api(
            self,
            "Api",
            names=names,
            config=config.api,
            hooks=config.hooks,
            log_retention=log_retention,
        )
        defaults = LambdaDefaults(
            names=names,
            layer=layer.layer,
            settings=Settings(
                ledger_table=storage.ledger.table_name,
                state_table=storage.state.table_name,
                event_bus_name=events.bus.event_bus_name,
                organizations=config.organizations,
                connections=connections.secret_ids,
            ),
            log_retention=log_retention,
            functions_root=functions_root,
            tracing=_TRACING[config.tracing],
        )

        # Import functions call Zoho for every configured organization: only their connections.
        used = {org.connection for org in config.organizations.values()}
        arns: dict[Resource, list[str]] = {
            Resource.LEDGER: [storage.ledger.table_arn],
            Resource.STATE: [storage.state.table_arn],
            Resource.CONNECTIONS_USED: connections.arns(used),
            Resource.CONNECTIONS_ALL: connections.arns(config.connections),
            Resource.BUS: [events.bus.event_bus_arn],
        }
        kinds = {
            spec.kind: KindImports(
                self,
                f"{spec.kind.title()}Imports",
                spec=spec,
                defaults=defaults,
                arns=arns,
                indexes=storage.indexes,
                queue_concurrency=config.queue_concurrency,
                events=events,
                api=api,
                observability=observability,
            )
            for spec in topology.IMPORT_FUNCTIONS
            if spec.kind
        }
        queues = {kind: (k.queue, k.dlq) for kind, k in kinds.items()}
        arns[Resource.KIND_QUEUES] = [queue.queue_arn for queue, _ in queues.values()]

        status = ServiceFunction(self, "StatusApi", spec=topology.STATUS_API, defaults=defaults)
        for method, path in topology.STATUS_API.http_routes:
            api.route(method, path, status.function)
        token_keeper = ServiceFunction(
            self, "TokenKeeper", spec=topology.TOKEN_KEEPER, defaults=defaults
        )
        redrive = ServiceFunction(
            self,
            "Redrive",
            spec=topology.REDRIVE,
            defaults=defaults,
            queue_urls={kind: queue.queue_url for kind, (queue, _) in queues.items()},
        )
        every_queue = {kind: queue.queue_url for kind, (queue, _) in queues.items()}
        channel_secrets = self.format_arn(
            service="secretsmanager",
            resource="secret",
            resource_name=f"{names.channel_secret_prefix}*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        arns[Resource.CHANNEL_SECRETS] = [channel_secrets]
        crm = {"channel_secret_prefix": names.channel_secret_prefix}
        sweep = ServiceFunction(
            self,
            "Sweep",
            spec=topology.SWEEP,
            defaults=defaults,
            queue_urls=every_queue,
            settings={**crm, "syncs": [sync.settings().model_dump() for sync in config.syncs]},
        )
        hooks = ServiceFunction(
            self,
            "CrmHooks",
            spec=topology.CRM_HOOKS,
            defaults=defaults,
            queue_urls=every_queue,
            settings=crm,
        )
        api.hook_route(hooks.function)
        jobs = (status, token_keeper, redrive, sweep, hooks)
        for job in jobs:
            grant_calls(job.role, job.spec, arns, storage.indexes)
        for crm_job in (sweep, hooks):
            acknowledge(
                crm_job.role,
                "Channel token secrets are created per channel at run time, named "
                f"{names.channel_secret_prefix}<channel id>: the prefix is the narrowest ARN",
                f"AwsSolutions-IAM5[Resource::{as_nag_sees_it(self, channel_secrets)}]",
            )

        Scheduling(
            self,
            "Scheduling",
            token_keeper=token_keeper.function,
            redrive=redrive.function,
            queues=queues,
            schedules=config.schedules,
            sweep=sweep.function,
            syncs=config.syncs,
        )

        for job in jobs:
            observability.watch_function(job.function, job.spec.name)
        observability.watch_crm()
        functions = {f.spec.name: f.function for f in (*(k.handler for k in kinds.values()), *jobs)}
        observability.watch_api(api.rest_api)
        observability.dashboard(queues=queues, functions=functions, api=api.rest_api)

        api.rest_api.node.try_remove_child("Endpoint")  # RestApi's own output, renamed ApiUrl
        CfnOutput(self, "ApiUrl", value=api.rest_api.url, description="Base URL of the API")
        CfnOutput(self, "EventBusName", value=events.bus.event_bus_name)
        CfnOutput(self, "LedgerTableName", value=storage.ledger.table_name)
        CfnOutput(self, "AlarmTopicArn", value=observability.topic.topic_arn)
        for kind, (queue, _) in queues.items():
            CfnOutput(self, f"{kind.title()}QueueUrl", value=queue.queue_url)
        if api.api_key:
            CfnOutput(
                self,
                "ApiKeyId",
                value=api.api_key.key_id,
                description="aws apigateway get-api-key --include-value --api-key <id>",
            )
