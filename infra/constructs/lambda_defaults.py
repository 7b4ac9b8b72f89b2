"""One set of Lambda defaults for every function: runtime, arm64, JSON logs, tracing, layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import AssetHashType, Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from crm_to_books import topology
from crm_to_books.settings import Settings
from crm_to_books.topology import FunctionSpec, Names
from infra.constructs.layer import ARCHITECTURE, RUNTIME, RUNTIME_REASON
from infra.constructs.nag import XRAY_REASON, acknowledge
from infra.constructs.removal import KEEP_NAMED
from infra.layer import build_function

FUNCTIONS_ROOT = Path(__file__).resolve().parents[2] / "functions"

_RETENTION = {
    1: logs.RetentionDays.ONE_DAY, 3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS, 7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS, 30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS, 90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS, 150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS, 365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS, 545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS, 1096: logs.RetentionDays.THREE_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS, 2192: logs.RetentionDays.SIX_YEARS,
    2557: logs.RetentionDays.SEVEN_YEARS, 2922: logs.RetentionDays.EIGHT_YEARS,
    3288: logs.RetentionDays.NINE_YEARS, 3653: logs.RetentionDays.TEN_YEARS,
}  # fmt: skip


def retention(days: int) -> logs.RetentionDays:
    return _RETENTION[days]


@dataclass(frozen=True)
class LambdaDefaults:
    """What every function shares; `settings` is the environment minus per-function parts."""

    names: Names
    layer: lambda_.ILayerVersion
    settings: Settings
    log_retention: logs.RetentionDays
    functions_root: Path = FUNCTIONS_ROOT
    tracing: lambda_.Tracing = lambda_.Tracing.ACTIVE  # config `tracing`


class ServiceFunction(Construct):
    """A function from its spec, with its own role (logs and X-Ray only) and log group."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        spec: FunctionSpec,
        defaults: LambdaDefaults,
        queue_urls: Mapping[str, str] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """`queue_urls`: the kind queues the function sends to; `settings`: other `Settings`
        fields of its own (e.g. the CRM syncs)."""
        super().__init__(scope, id)
        source = defaults.functions_root / spec.handler_dir
        if not (source / "handler.py").is_file():
            raise FileNotFoundError(f"function {spec.name!r}: {source}/handler.py does not exist")
        name = defaults.names.function(spec)
        # The handler's own folder only (never the repository around it), with its bytecode.
        asset, digest = build_function(source)
        self.spec = spec
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Execution role of {name}",
        )
        log_group = logs.LogGroup(
            self,
            "Logs",
            log_group_name=f"/aws/lambda/{name}",
            retention=defaults.log_retention,
            removal_policy=KEEP_NAMED,  # the logs of what happened outlive the stack
        )
        log_group.grant_write(self.role)
        own = Settings.model_validate(
            {
                **defaults.settings.model_dump(),
                "queue_urls": dict(queue_urls or {}),
                **dict(settings or {}),
            }
        )
        self.function = lambda_.Function(
            self,
            "Function",
            function_name=name,
            description=spec.description,
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            code=lambda_.Code.from_asset(
                str(asset), asset_hash=digest, asset_hash_type=AssetHashType.CUSTOM
            ),
            handler=topology.HANDLER,
            layers=[defaults.layer],
            memory_size=spec.memory_mb,
            timeout=Duration.seconds(spec.timeout_seconds),
            role=self.role,
            log_group=log_group,
            logging_format=lambda_.LoggingFormat.JSON,
            application_log_level_v2=lambda_.ApplicationLogLevel.INFO,
            system_log_level_v2=lambda_.SystemLogLevel.WARN,
            tracing=defaults.tracing,
            environment={
                **own.to_env(),
                **spec.environment,
                "POWERTOOLS_SERVICE_NAME": topology.SERVICE_NAME,
                "POWERTOOLS_METRICS_NAMESPACE": topology.METRICS_NAMESPACE,
            },
        )
        acknowledge(self.role, XRAY_REASON, "AwsSolutions-IAM5[Resource::*]")
        acknowledge(self.function, RUNTIME_REASON, "AwsSolutions-L1")
