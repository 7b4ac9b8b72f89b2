"""The REST API: IAM auth on every method by default, request validation, access logs."""

from __future__ import annotations

import json
import re

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigateway
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from crm_to_books import topology
from crm_to_books.errors import InvalidRequest
from crm_to_books.topology import Names
from infra.config import ApiConfig, HooksConfig
from infra.constructs.nag import acknowledge, as_nag_sees_it

# What API Gateway's account-wide role needs to write logs (as AWS's managed policy
# AmazonAPIGatewayPushToCloudWatchLogs, and AWS Solutions Constructs, grant).
ACCOUNT_LOG_ACTIONS = (
    "logs:CreateLogGroup",
    "logs:CreateLogStream",
    "logs:DescribeLogGroups",
    "logs:DescribeLogStreams",
    "logs:PutLogEvents",
    "logs:GetLogEvents",
    "logs:FilterLogEvents",
)

_PATH_PARAMETER = re.compile(r"{(\w+)}")
# A route that addresses one record needs the organization it belongs to.
_RECORD_PARAMETER = "crm_id"
_ORGANIZATION = "organization_id"


class Api(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        names: Names,
        config: ApiConfig,
        hooks: HooksConfig,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, id)
        self.config = config
        access_logs = logs.LogGroup(
            self, "AccessLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.rest_api = apigateway.RestApi(
            self,
            "RestApi",
            rest_api_name=names.api_name,
            description="Imports Zoho CRM records into Zoho Books; import status",
            endpoint_types=[apigateway.EndpointType.REGIONAL],
            cloud_watch_role=False,  # made below, as configured
            api_key_source_type=(
                apigateway.ApiKeySourceType.HEADER if config.auth == "api_key" else None
            ),
            deploy_options=apigateway.StageOptions(
                stage_name=topology.API_STAGE,
                tracing_enabled=True,
                throttling_rate_limit=config.throttling_rate_limit,
                throttling_burst_limit=config.throttling_burst_limit,
                # The public hook route has its own, lower limits: a flood of forged
                # notifications cannot take the signed callers' share.
                method_options={
                    f"{topology.HOOK_PATH}/POST": apigateway.MethodDeploymentOptions(
                        throttling_rate_limit=hooks.throttling_rate_limit,
                        throttling_burst_limit=hooks.throttling_burst_limit,
                    )
                },
                data_trace_enabled=False,
                access_log_destination=apigateway.LogGroupLogDestination(access_logs),
                access_log_format=apigateway.AccessLogFormat.json_with_standard_fields(
                    caller=True,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=True,
                ),
            ),
        )
        self.account: apigateway.CfnAccount | None = None
        if config.cloudwatch_role == "create":
            self.account = self._account_logging_role()
        # No method declares a body model, so body validation is a no-op kept for cdk-nag.
        self.validator = self.rest_api.add_request_validator(
            "Validator", validate_request_parameters=True, validate_request_body=True
        )
        # Missing parameters, and a body its model refuses, answer in the service's own shape.
        for response_id, response_type in (
            ("BadRequestParameters", apigateway.ResponseType.BAD_REQUEST_PARAMETERS),
            ("BadRequestBody", apigateway.ResponseType.BAD_REQUEST_BODY),
        ):
            self.rest_api.add_gateway_response(
                response_id,
                type=response_type,
                status_code="400",
                templates={
                    "application/json": json.dumps(
                        {
                            "code": InvalidRequest.code,
                            "message": "$context.error.validationErrorString",
                        }
                    )
                },
            )
        acknowledge(
            self.rest_api.deployment_stage,
            "IAM auth, stage throttling and request validation guard the API; a WAF web ACL "
            "can be attached per account without changing this stack",
            "AwsSolutions-APIG3",
        )
        acknowledge(
            self.rest_api.deployment_stage,
            "Access logs and X-Ray tracing are on; execution logs are off: API Gateway would "
            "write them to a log group it creates outside the stack, kept forever",
            "AwsSolutions-APIG6",
        )
        self.api_key: apigateway.IApiKey | None = None
        if config.auth == "api_key":
            plan = self.rest_api.add_usage_plan(
                "UsagePlan",
                name=f"{names.api_name}-callers",
                throttle=apigateway.ThrottleSettings(
                    rate_limit=config.throttling_rate_limit,
                    burst_limit=config.throttling_burst_limit,
                ),
                api_stages=[apigateway.UsagePlanPerApiStage(stage=self.rest_api.deployment_stage)],
            )
            self.api_key = self.rest_api.add_api_key("ApiKey", api_key_name=f"{names.api_name}-key")
            plan.add_api_key(self.api_key)

    def _account_logging_role(self) -> apigateway.CfnAccount:
        """The account's API Gateway CloudWatch Logs role, which a stage with access logs needs
        (else: "CloudWatch Logs role ARN must be set in account settings to enable logging").
        One per account and region: the last stack to set it wins, and each such role can
        write any API's logs. The role is kept if the stack is deleted, so the account's
        setting never points at a role that is gone."""
        stack = Stack.of(self)
        logs_in_region = stack.format_arn(
            service="logs", resource="*", arn_format=ArnFormat.NO_RESOURCE_NAME
        )
        role = iam.Role(
            self,
            "CloudWatchRole",
            assumed_by=iam.ServicePrincipal("apigateway.amazonaws.com"),
            description="API Gateway (account setting): write every API's logs to CloudWatch Logs",
            inline_policies={
                "PushLogs": iam.PolicyDocument(
                    statements=[
                        iam.PolicyStatement(
                            actions=list(ACCOUNT_LOG_ACTIONS), resources=[logs_in_region]
                        )
                    ]
                )
            },
        )
        role.apply_removal_policy(RemovalPolicy.RETAIN)
        acknowledge(
            role,
            "The account-wide API Gateway role writes the logs of every API in the region, "
            "including log groups API Gateway names itself (execution logs)",
            f"AwsSolutions-IAM5[Resource::{as_nag_sees_it(self, logs_in_region)}]",
        )
        account = apigateway.CfnAccount(self, "Account", cloud_watch_role_arn=role.role_arn)
        account.node.add_dependency(self.rest_api.node.default_child)
        # The stage turns access logging on: the account must have the role first.
        self.rest_api.deployment_stage.node.add_dependency(account)
        return account

    def route(self, method: str, path: str, function: lambda_.IFunction) -> apigateway.Method:
        """Add `method path` (API Gateway syntax) proxied to `function`."""
        parameters = {f"method.request.path.{p}": True for p in _PATH_PARAMETER.findall(path)}
        if _RECORD_PARAMETER in _PATH_PARAMETER.findall(path):
            parameters[f"method.request.querystring.{_ORGANIZATION}"] = True
        public = path in self.config.public_paths
        if public or self.config.auth == "api_key":
            authorization = apigateway.AuthorizationType.NONE
        else:
            authorization = apigateway.AuthorizationType.IAM
        resource = self.rest_api.root.resource_for_path(path)
        added = resource.add_method(
            method,
            apigateway.LambdaIntegration(function, allow_test_invoke=False),
            authorization_type=authorization,
            api_key_required=self.config.auth == "api_key" and not public,
            request_parameters=parameters,
            request_validator=self.validator,
        )
        if public:
            reason = "Configured public (api.public_paths): serves no import data"
        elif self.config.auth == "api_key":
            reason = "Configured api_key auth: callers outside AWS use an API key and usage plan"
        else:
            reason = "IAM (SigV4) auth: callers are AWS principals, not Cognito users"
        rules = ["AwsSolutions-COG4"]
        if authorization == apigateway.AuthorizationType.NONE:
            rules.append("AwsSolutions-APIG4")
        acknowledge(added, reason, *rules)
        return added

    def hook_route(self, function: lambda_.IFunction) -> apigateway.Method:
        """`POST /v1/hooks/zoho-crm`: Zoho CRM cannot sign a request or send an API key, so the
        function verifies each notification's channel token; the stage throttles this route
        on its own, and a model refuses bodies that are no notification."""
        model = self.rest_api.add_model(
            "CrmNotification",
            content_type="application/json",
            model_name="CrmNotification",
            schema=apigateway.JsonSchema(
                schema=apigateway.JsonSchemaVersion.DRAFT4,
                type=apigateway.JsonSchemaType.OBJECT,
                required=["ids"],
                properties={
                    "ids": apigateway.JsonSchema(
                        type=apigateway.JsonSchemaType.ARRAY, max_items=topology.HOOK_MAX_IDS
                    ),
                    "module": apigateway.JsonSchema(
                        type=apigateway.JsonSchemaType.STRING, max_length=100
                    ),
                    "operation": apigateway.JsonSchema(
                        type=apigateway.JsonSchemaType.STRING, max_length=50
                    ),
                },
            ),
        )
        resource = self.rest_api.root.resource_for_path(topology.HOOK_PATH)
        added = resource.add_method(
            "POST",
            apigateway.LambdaIntegration(function, allow_test_invoke=False),
            authorization_type=apigateway.AuthorizationType.NONE,
            api_key_required=False,
            request_models={"application/json": model},
            request_validator=self.validator,
        )
        acknowledge(
            added,
            "Zoho CRM's notifications cannot be signed: each is verified by its channel's "
            "token (constant-time compare) in the function; the route is throttled on its own",
            "AwsSolutions-APIG4",
            "AwsSolutions-COG4",
        )
        return added
