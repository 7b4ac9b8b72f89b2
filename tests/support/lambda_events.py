"""Real Lambda event shapes (tests/fixtures/events), adjusted per test, and a Lambda context."""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVENTS = Path(__file__).resolve().parent.parent / "fixtures" / "events"
QUEUE_ARN = "arn:aws:sqs:eu-west-1:123456789012:crm-to-books-{kind}-imports"


def load(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name}.json").read_text())


def api_event(
    method: str,
    path: str,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    stage: str = "prod",
) -> dict[str, Any]:
    """The recorded REST proxy event, re-aimed at `method path?query` with extra `headers`."""
    event = load("apigw_rest_import")
    event["httpMethod"] = event["requestContext"]["httpMethod"] = method
    event["path"] = path
    event["resource"] = event["requestContext"]["resourcePath"] = path
    event["pathParameters"] = None
    event["requestContext"]["path"] = f"/{stage}{path}"
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    event["queryStringParameters"] = query or None
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in (query or {}).items()} or None
    for name, value in (headers or {}).items():
        event["headers"][name] = value
        event["multiValueHeaders"][name] = [value]
    return event


def sqs_record(
    body: str | dict[str, Any],
    kind: str = "account",
    message_id: str | None = None,
    receipt_handle: str | None = None,
    receive_count: int = 1,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    """A record of the recorded SQS batch with its body, queue and ids replaced."""
    record = copy.deepcopy(load("sqs_batch")["Records"][0])
    record["body"] = body if isinstance(body, str) else json.dumps(body)
    record["messageId"] = message_id or str(uuid.uuid4())
    record["receiptHandle"] = receipt_handle or f"handle-{record['messageId']}"
    record["eventSourceARN"] = QUEUE_ARN.format(kind=kind)
    record["attributes"]["ApproximateReceiveCount"] = str(receive_count)
    record["messageAttributes"] = (
        {"correlation_id": {"stringValue": correlation_id, "dataType": "String"}}
        if correlation_id
        else {}
    )
    return record


def eventbridge_body(kind: str, organization_id: str, crm_id: str, **changes: Any) -> str:
    """The body an EventBridge rule delivers to SQS: the whole `Import Requested` event."""
    event = json.loads(load("sqs_record_eventbridge")["body"])
    event["detail"] = {"kind": kind, "organization_id": organization_id, "crm_id": crm_id}
    event.update(changes)
    return json.dumps(event)


def sqs_event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


@dataclass
class LambdaContext:
    function_name: str = "crm-to-books-account-import"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = (
        "arn:aws:lambda:eu-west-1:123456789012:function:crm-to-books-account-import"
    )
    aws_request_id: str = "52fdfc07-2182-454f-963f-5f0f9a621d72"
    log_group_name: str = "/aws/lambda/crm-to-books-account-import"
    log_stream_name: str = "2025/01/01/[$LATEST]0123456789abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def received_records(sqs: Any, queue_url: str, count: int = 10) -> list[dict[str, Any]]:
    """Messages received from a (moto) queue as Lambda's event source mapping delivers them."""
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    got = sqs.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=count,
        MessageSystemAttributeNames=["All"],
        MessageAttributeNames=["All"],
    ).get("Messages", [])
    return [
        {
            "messageId": m["MessageId"],
            "receiptHandle": m["ReceiptHandle"],
            "body": m["Body"],
            "attributes": m.get("Attributes", {}),
            "messageAttributes": {
                name: {"stringValue": a.get("StringValue"), "dataType": a["DataType"]}
                for name, a in m.get("MessageAttributes", {}).items()
            },
            "md5OfBody": m["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": arn,
            "awsRegion": arn.split(":")[3],
        }
        for m in got
    ]


def emitted_metrics(out: str) -> dict[str, float]:
    """Metric values from the EMF lines Powertools printed."""
    found: dict[str, float] = {}
    for line in out.splitlines():
        if '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for spec in blob["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
            value = blob[spec["Name"]]
            found[spec["Name"]] = value[0] if isinstance(value, list) else value
    return found
