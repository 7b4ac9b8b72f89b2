"""The REST API: routes from topology, auth on every method, validation, logs, throttling."""

from __future__ import annotations

import pytest

from crm_to_books import topology
from crm_to_books.errors import InvalidRequest
from tests.infra.conftest import CONFIG, synthesize

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
    raw = {**CONFIG, "api": {"auth": "api_key", "public_paths": ["/v1/health"]}}
    return synthesize(raw, tmp_path_factory.mktemp("cdk.out.api_key"))


def test_every_route_reaches_its_function_and_nothing_else_is_exposed(synth):
    methods = _methods(synth)
    assert set(methods) == {(m, p) for _, m, p in ROUTES}
    for spec, method, path in ROUTES:
        function_id, _ = synth.function(spec)
        integration = methods[(method, path)]["Integration"]
        assert integration["Type"] == "AWS_PROXY"
        assert f'"{function_id}"' in str(integration["Uri"]).replace("'", '"')


def test_every_method_requires_iam_auth_and_validates_parameters(synth):
    (validator_id, validator), *_ = synth.of_type("AWS::ApiGateway::RequestValidator").items()
    assert validator["ValidateRequestParameters"] is True
    for (method, path), props in _methods(synth).items():
        assert props["AuthorizationType"] == "AWS_IAM", (method, path)
        assert props["ApiKeyRequired"] is False
        assert props["RequestValidatorId"] == {"Ref": validator_id}


def test_record_routes_require_the_organization(synth):
    for (method, path), props in _methods(synth).items():
        required = props.get("RequestParameters", {})
        needs_org = "{crm_id}" in path
        assert required.get("method.request.querystring.organization_id", False) is needs_org
        if needs_org:
            assert required["method.request.path.crm_id"] is True, (method, path)


def test_missing_parameters_answer_in_the_service_error_shape(synth):
    (response,) = synth.of_type("AWS::ApiGateway::GatewayResponse").values()
    assert response["ResponseType"] == "BAD_REQUEST_PARAMETERS"
    assert f'"code": {InvalidRequest.code}' in response["ResponseTemplates"]["application/json"]


def test_stage_logs_access_traces_and_throttles(synth):
    (stage,) = synth.of_type("AWS::ApiGateway::Stage").values()
    assert stage["StageName"] == topology.API_STAGE
    assert stage["TracingEnabled"] is True
    log_group = stage["AccessLogSetting"]["DestinationArn"]["Fn::GetAtt"][0]
    assert synth.resources[log_group]["Type"] == "AWS::Logs::LogGroup"
    assert "$context.status" in stage["AccessLogSetting"]["Format"]
    (settings,) = stage["MethodSettings"]
    assert settings["ThrottlingRateLimit"] == 50
    assert settings["ThrottlingBurstLimit"] == 100
    assert settings["DataTraceEnabled"] is False  # bodies never reach the logs
    (api,) = synth.of_type("AWS::ApiGateway::RestApi").values()
    assert api["Name"] == synth.names.api_name


def test_api_key_mode_requires_a_key_except_on_public_paths(api_key_synth):
    for (method, path), props in _methods(api_key_synth).items():
        public = path == "/v1/health"
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
