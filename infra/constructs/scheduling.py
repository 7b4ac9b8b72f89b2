"""EventBridge Scheduler: the maintenance jobs, the CRM sweeps and channel renewal, and the
user-declared import schedules."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aws_cdk import Aws, Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from crm_to_books import topology
from infra.config import ScheduleConfig, SyncConfig
from infra.constructs.nag import acknowledge, arn_finding


class Scheduling(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        token_keeper: lambda_.IFunction,
        redrive: lambda_.IFunction,
        queues: Mapping[str, tuple[sqs.IQueue, sqs.IQueue]],
        schedules: Iterable[ScheduleConfig],
        sweep: lambda_.IFunction,
        syncs: Iterable[SyncConfig],
    ) -> None:
        super().__init__(scope, id)
        self._job("TokenKeeper", token_keeper, topology.TOKEN_KEEPER_RATE_MINUTES)
        self._job("Redrive", redrive, topology.REDRIVE_RATE_MINUTES)
        sweeps = self._role("Sweep", sweep)
        self._job(
            "ChannelRenewal",
            sweep,
            topology.CHANNEL_RENEW_RATE_MINUTES,
            role=sweeps,
            input={"action": "renew_channels"},
        )
        for sync in syncs:
            # A missed run is harmless: the next one starts from the checkpoint.
            scheduler.Schedule(
                self,
                f"Sweep-{sync.organization_id}-{sync.kind}",
                description=f"Sweeps Zoho CRM for {sync.kind} records of {sync.organization_id}",
                schedule=scheduler.ScheduleExpression.expression(sync.schedule),
                target=targets.LambdaInvoke(
                    sweep,
                    role=sweeps,
                    retry_attempts=0,
                    input=scheduler.ScheduleTargetInput.from_object(
                        {
                            "action": "sweep",
                            "organization_id": sync.organization_id,
                            "kind": sync.kind,
                        }
                    ),
                ),
            )
        for declared in schedules:
            queue, dlq = queues[declared.kind]
            scheduler.Schedule(
                self,
                f"Import-{declared.name}",
                description=f"{declared.name}: import {declared.kind} {declared.crm_id}",
                schedule=scheduler.ScheduleExpression.expression(declared.expression),
                enabled=declared.enabled,
                target=targets.SqsSendMessage(
                    queue,
                    input=scheduler.ScheduleTargetInput.from_object(
                        {"organization_id": declared.organization_id, "crm_id": declared.crm_id}
                    ),
                    dead_letter_queue=dlq,
                ),
            )

    def _job(
        self,
        id: str,
        function: lambda_.IFunction,
        minutes: int,
        role: iam.IRole | None = None,
        input: Mapping[str, str] | None = None,
    ) -> None:
        # A missed run is harmless: the next one comes within minutes.
        target = targets.LambdaInvoke(
            function,
            role=role or self._role(id, function),
            retry_attempts=0,
            input=scheduler.ScheduleTargetInput.from_object(dict(input)) if input else None,
        )
        scheduler.Schedule(
            self,
            id,
            description=f"Runs the {id} job every {minutes} minutes",
            schedule=scheduler.ScheduleExpression.rate(Duration.minutes(minutes)),
            target=target,
        )

    def _role(self, id: str, function: lambda_.IFunction) -> iam.Role:
        """A role EventBridge Scheduler assumes to invoke `function`."""
        role = iam.Role(
            self,
            f"{id}Role",
            # Scheduler assumes it for this account's default schedule group only.
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com",
                conditions={
                    "StringEquals": {
                        "aws:SourceAccount": Aws.ACCOUNT_ID,
                        "aws:SourceArn": Stack.of(self).format_arn(
                            service="scheduler",
                            resource="schedule-group",
                            resource_name="default",
                        ),
                    }
                },
            ),
            description=f"EventBridge Scheduler: invoke the {id} job",
        )
        acknowledge(
            role,
            "lambda:InvokeFunction on the function's versions and aliases (ARN:*) of one function",
            arn_finding(function, ":*"),
        )
        return role
