"""The REST API: routes from topology, auth on every method, validation, logs, throttling."""

from __future__ import annotations

import pytest

from crm_to_books import topology
from crm_to_books.errors import InvalidRequest
from infra.constructs.api import ACCOUNT_LOG_ACTIONS
from tests.infra.conftest import CONFIG, synthesize
from tests.infra.policy import Env, Request, Resolved, allows

ROUTES = [(spec, m, p) for spec in topology.ALL_FUNCTIONS for m, p in spec.http_routes]


def _paths(synth):
    """Resource logical id -> full path, rebuilt from the resource tree."""
    resources = synth.of_type("AWS::ApiGateway::Resource")

    def path(lid):
        parent = resources[lid]["ParentId"]
        prefix = path(parent["Ref"]) if "Ref" in parent else ""
        return f"{prefix}/{resources[lid]['PathPart']}"

    return {lid: path(lid) for lid in resources}


def _methods(synth):
    paths = _paths(synth)
    return {
        (p["HttpMethod"], paths[p["ResourceId"]["Ref"]]): p
        for p in synth.of_type("AWS::ApiGateway::Method").values()
    }


@pytest.fixture(scope="module")
def api_key_synth(tmp_path_factory):
    # Also a stage in an account whose API Gateway logging role is set already.
    # And functions that trace only what their caller sampled (config `tracing`).
    api = {"auth": "api_key", "public_paths": ["/v1/health"], "cloudwatch_role": "existing"}
    raw = {**CONFIG, "api": api, "tracing": "pass_through"}
    return synthesize(raw, tmp_path_factory.mktemp("cdk.out.api_key"))


def test_every_route_reaches_its_function_and_nothing_else_is_exposed(synth):
    methods = _methods(synth)
    assert set(methods) == {(m, p) for _, m, p in ROUTES}
    for spec, method, path in ROUTES:
        function_id, _ = synth.function(spec)
        integration = methods[(method, path)]["Integration"]
        assert integration["Type"] == "AWS_PROXY"
        assert f'"{function_id}"' in str(integration["Uri"]).replace("'", '"')


HOOK = ("POST", topology.HOOK_PATH)


def test_every_method_but_the_hook_requires_iam_auth_and_validates_parameters(synth):
    (validator_id, validator), *_ = synth.of_type("AWS::ApiGateway::RequestValidator").items()
    assert validator["ValidateRequestParameters"] is True
    for (method, path), props in _methods(synth).items():
        expected = "NONE" if (method, path) == HOOK else "AWS_IAM"
        assert props["AuthorizationType"] == expected, (method, path)
        assert props["ApiKeyRequired"] is False
        assert props["RequestValidatorId"] == {"Ref": validator_id}


def test_record_routes_require_the_organization(synth):
    for (method, path), props in _methods(synth).items():
        required = props.get("RequestParameters", {})
        needs_org = "{crm_id}" in path
        assert required.get("method.request.querystring.organization_id", False) is needs_org
        if needs_org:
            assert required["method.request.path.crm_id"] is True, (method, path)


def test_missing_parameters_and_refused_bodies_answer_in_the_service_error_shape(synth):
    responses = synth.of_type("AWS::ApiGateway::GatewayResponse").values()
    assert {r["ResponseType"] for r in responses} == {"BAD_REQUEST_PARAMETERS", "BAD_REQUEST_BODY"}
    for response in responses:
        template = response["ResponseTemplates"]["application/json"]
        assert f'"code": {InvalidRequest.code}' in template


def test_the_hook_route_is_public_throttled_on_its_own_and_validates_its_body(synth):
    hook = _methods(synth)[HOOK]
    assert hook["AuthorizationType"] == "NONE"
    assert hook["ApiKeyRequired"] is False
    (model_id,) = synth.of_type("AWS::ApiGateway::Model")
    assert hook["RequestModels"] == {"application/json": {"Ref": model_id}}
    schema = synth.resources[model_id]["Properties"]["Schema"]
    assert schema["required"] == ["ids"]
    assert schema["properties"]["ids"]["maxItems"] == topology.HOOK_MAX_IDS
    (stage,) = synth.of_type("AWS::ApiGateway::Stage").values()
    (settings,) = [
        m for m in stage["MethodSettings"] if m["ResourcePath"] == "/~1v1~1hooks~1zoho-crm"
    ]
    assert settings["HttpMethod"] == "POST"
    assert settings["ThrottlingRateLimit"] == topology.HOOK_THROTTLING_RATE_LIMIT
    assert settings["ThrottlingBurstLimit"] == topology.HOOK_THROTTLING_BURST_LIMIT


def test_api_key_mode_does_not_ask_zoho_for_a_key(api_key_synth):
    assert _methods(api_key_synth)[HOOK]["ApiKeyRequired"] is False


def test_stage_logs_access_traces_and_throttles(synth):
    (stage,) = synth.of_type("AWS::ApiGateway::Stage").values()
    assert stage["StageName"] == topology.API_STAGE
    assert stage["TracingEnabled"] is True
    resolved = Resolved(synth.template, Env())
    destination = resolved.resolve(stage["AccessLogSetting"]["DestinationArn"])
    (log_group,) = [
        lid
        for lid in synth.of_type("AWS::Logs::LogGroup")
        if resolved.attr(lid, "Arn") == f"{destination}:*"  # API Gateway's form: no `:*`
    ]
    assert log_group.startswith("ApiAccessLogs")
    assert "$context.status" in stage["AccessLogSetting"]["Format"]
    (settings,) = [m for m in stage["MethodSettings"] if m["ResourcePath"] == "/*"]
    assert settings["ThrottlingRateLimit"] == 50
    assert settings["ThrottlingBurstLimit"] == 100
    assert settings["DataTraceEnabled"] is False  # bodies never reach the logs
    (api,) = synth.of_type("AWS::ApiGateway::RestApi").values()
    assert api["Name"] == synth.names.api_name


def test_api_key_mode_requires_a_key_except_on_public_paths(api_key_synth):
    for (method, path), props in _methods(api_key_synth).items():
        public = path in ("/v1/health", topology.HOOK_PATH)
        assert props["AuthorizationType"] == "NONE"
        assert props["ApiKeyRequired"] is not public, (method, path)
    (api,) = api_key_synth.of_type("AWS::ApiGateway::RestApi").values()
    assert api["ApiKeySourceType"] == "HEADER"
    (plan_id, plan), *_ = api_key_synth.of_type("AWS::ApiGateway::UsagePlan").items()
    assert plan["Throttle"] == {"BurstLimit": 100, "RateLimit": 50}
    (stage_id,) = api_key_synth.of_type("AWS::ApiGateway::Stage")
    assert plan["ApiStages"][0]["Stage"] == {"Ref": stage_id}
    (key_id,) = api_key_synth.of_type("AWS::ApiGateway::ApiKey")
    (link,) = api_key_synth.of_type("AWS::ApiGateway::UsagePlanKey").values()
    assert link == {"KeyId": {"Ref": key_id}, "KeyType": "API_KEY", "UsagePlanId": {"Ref": plan_id}}


def test_the_stack_sets_the_accounts_api_gateway_logging_role_before_the_stage(synth):
    # Without it the first deploy on a fresh account fails: "CloudWatch Logs role ARN must be
    # set in account settings to enable logging".
    resolved = Resolved(synth.template, Env())
    (account_id, account), *others = synth.of_type("AWS::ApiGateway::Account").items()
    assert not others
    role_id = account["CloudWatchRoleArn"]["Fn::GetAtt"][0]
    assert resolved.trust(role_id) == [
        {
            "Action": "sts:AssumeRole",
            "Effect": "Allow",
            "Principal": {"Service": "apigateway.amazonaws.com"},
        }
    ]
    statements = resolved.role_statements(role_id)
    (stage_id,) = synth.of_type("AWS::ApiGateway::Stage")
    access_logs = resolved.resolve(
        synth.resources[stage_id]["Properties"]["AccessLogSetting"]["DestinationArn"]
    )
    env = resolved.env
    execution_logs = (
        f"arn:{env.partition}:logs:{env.region}:{env.account}:log-group:"
        "API-Gateway-Execution-Logs_abc123/prod"
    )
    for group in (access_logs, execution_logs):
        for action in ACCOUNT_LOG_ACTIONS:
            assert allows(statements, Request(action, f"{group}:log-stream:x")), (action, group)
    # Kept when the stack goes: the account's setting must never point at a deleted role.
    assert synth.resources[role_id]["DeletionPolicy"] == "Retain"
    assert account_id in synth.resources[stage_id]["DependsOn"]


def test_an_existing_account_role_is_left_alone(api_key_synth):
    assert not api_key_synth.of_type("AWS::ApiGateway::Account")
    resolved = Resolved(api_key_synth.template, Env())
    for role_id in api_key_synth.of_type("AWS::IAM::Role"):
        principals = [s["Principal"] for s in resolved.trust(role_id)]
        assert {"Service": "apigateway.amazonaws.com"} not in principals


def test_tracing_pass_through_traces_what_the_caller_sampled_and_keeps_the_grant(api_key_synth):
    for spec in topology.ALL_FUNCTIONS:
        _, props = api_key_synth.function(spec)
        assert props["TracingConfig"] == {"Mode": "PassThrough"}, spec.name
        role = props["Role"]["Fn::GetAtt"][0]
        actions = {
            a
            for statement in api_key_synth.role_statements(role)
            for a in api_key_synth.as_list(statement["Action"])
        }
        # Lambda still sends the segments of a sampled caller's invocations.
        assert {"xray:PutTraceSegments", "xray:PutTelemetryRecords"} <= actions, spec.name
    (stage,) = api_key_synth.of_type("AWS::ApiGateway::Stage").values()
    assert stage["TracingEnabled"] is True  # the API stage samples, and the functions follow
