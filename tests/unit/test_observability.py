"""Tracing costs nothing where X-Ray does not sample: no SDK loaded, no library patched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# In a fresh interpreter: the tracer decorating a handler and a method, as the engine does.
PROBE = """
import json, sys
from crm_to_books.observability import tracer

@tracer.capture_method(capture_response=False)
def step():
    tracer.put_annotation("zoho_category", "success")
    return 1

@tracer.capture_lambda_handler
def handler(event, context):
    return step()

after_import = "aws_xray_sdk" in sys.modules
result = handler({}, None)
print(json.dumps({
    "after_import": after_import,
    "after_call": "aws_xray_sdk" in sys.modules,
    "botocore_patched": "aws_xray_sdk.ext.botocore.patch" in sys.modules,
    "result": result,
}))
"""


def probe(trace_header: str, code: str = PROBE) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if key != "POWERTOOLS_TRACE_DISABLED"}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(ROOT / "layers/core/python"), str(ROOT)]),
        "_X_AMZN_TRACE_ID": trace_header,
        "LAMBDA_TASK_ROOT": str(ROOT),  # Powertools traces only in Lambda
        # No daemon listens there: the SDK's UDP datagrams go nowhere.
        "AWS_XRAY_CONTEXT_MISSING": "IGNORE_ERROR",
        "AWS_XRAY_DAEMON_ADDRESS": "127.0.0.1:9",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_an_unsampled_invocation_never_loads_the_xray_sdk() -> None:
    got = probe("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0")
    assert got == {
        "after_import": False,
        "after_call": False,
        "botocore_patched": False,
        "result": 1,
    }


def test_a_sampled_invocation_builds_the_tracer_and_patches_what_the_engine_calls() -> None:
    got = probe("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1")
    assert got["after_import"] is False
    assert got["after_call"] is True
    assert got["botocore_patched"] is True
    assert got["result"] == 1


# A sampled invocation whose work runs in lanes (worker threads), as a batch's organizations do.
LANES_PROBE = """
import json
from concurrent.futures import ThreadPoolExecutor
from aws_xray_sdk.core import xray_recorder
from crm_to_books.observability import tracer

@tracer.capture_method(capture_response=False)
def step(n):
    sub = xray_recorder.current_subsegment()
    return {"name": sub.name, "parent": sub.parent_id, "trace": sub.trace_id}

@tracer.capture_lambda_handler
def handler(event, context):
    here = xray_recorder.current_subsegment()
    with ThreadPoolExecutor(2) as pool:
        lanes = list(pool.map(tracer.in_threads(step), [1, 2]))
    return {"handler": here.id, "trace": here.trace_id, "lanes": lanes}

print(json.dumps(handler({}, None)))
"""


def test_a_lanes_subsegments_are_recorded_under_the_invocations_handler() -> None:
    got = probe(
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        LANES_PROBE,
    )
    assert [lane["parent"] for lane in got["lanes"]] == [got["handler"]] * 2
    assert {lane["trace"] for lane in got["lanes"]} == {got["trace"]}
    assert {lane["name"] for lane in got["lanes"]} == {"## __main__.step"}
