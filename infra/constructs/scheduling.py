"""EventBridge Scheduler: the maintenance jobs and the user-declared import schedules."""

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
from infra.config import ScheduleConfig
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
    ) -> None:
        super().__init__(scope, id)
        self._job("TokenKeeper", token_keeper, topology.TOKEN_KEEPER_RATE_MINUTES)
        self._job("Redrive", redrive, topology.REDRIVE_RATE_MINUTES)
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

    def _job(self, id: str, function: lambda_.IFunction, minutes: int) -> None:
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
        # A missed run is harmless: the next one comes within minutes.
        target = targets.LambdaInvoke(function, role=role, retry_attempts=0)
        scheduler.Schedule(
            self,
            id,
            description=f"Runs the {id} job every {minutes} minutes",
            schedule=scheduler.ScheduleExpression.rate(Duration.minutes(minutes)),
            target=target,
        )
        acknowledge(
            role,
            "lambda:InvokeFunction on the function's versions and aliases (ARN:*) of one function",
            arn_finding(function, ":*"),
        )
