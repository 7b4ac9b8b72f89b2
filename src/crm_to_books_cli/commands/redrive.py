"""`crm-to-books redrive --kind KIND | --all`: move DLQ messages back to their kind's queue.

SQS's own message-move task on AWS; against an emulator, which lacks it, receive, send to
the queue, then delete. Replaying is safe: the ledger answers records already imported
without calling Zoho.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from crm_to_books.entities import KINDS
from crm_to_books_cli import output, target
from crm_to_books_cli.target import CliError, Target

ATTRIBUTE_FIELDS = {"DataType", "StringValue", "BinaryValue"}
RECEIVE_VISIBILITY = 60  # long enough to send and delete a batch


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "redrive",
        help="move DLQ messages back to their kind's queue",
        description="Replays a kind's dead-letter queue into its import queue (SQS "
        "StartMessageMoveTask on AWS) and prints how many moved.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--kind", choices=KINDS, help="one kind's DLQ")
    which.add_argument("--all", action="store_true", help="every kind's DLQ")
    parser.add_argument(
        "--timeout", type=float, default=120, help="seconds to wait for a move task (120)"
    )
    target.add_arguments(parser)
    parser.set_defaults(func=target.command(run))


def run(args: argparse.Namespace) -> int:
    where = target.resolve(args)
    out = output.console()
    total = 0
    for kind in target.kinds(args.kind, args.all):
        dlq, queue = where.dlq_url(kind), where.queue_url(kind)
        moved, how = _move(where, dlq, queue, args.timeout)
        total += moved
        out.print(
            f"{kind}: moved {moved} message(s) from {where.names.dlq(kind)} "
            f"to {where.names.queue(kind)} ({how})"
        )
    if args.all:
        out.print(f"moved {total} message(s) in all")
    return 0


def _move(where: Target, dlq: str, queue: str, timeout: float) -> tuple[int, str]:
    sqs = where.client("sqs")
    if where.local:
        # The emulator (moto 5.2) has no StartMessageMoveTask: it answers HTTP 500.
        return _copy(sqs, dlq, queue), "receive, send, delete"
    dlq_arn = _arn(sqs, dlq)
    sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=_arn(sqs, queue))
    return _wait_for_task(sqs, dlq_arn, timeout), "SQS message move task"


def _wait_for_task(sqs: Any, dlq_arn: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        tasks = sqs.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=1)["Results"]
        task = tasks[0] if tasks else {}
        status = task.get("Status")
        if status == "COMPLETED":
            return int(task.get("ApproximateNumberOfMessagesMoved", 0))
        if status in {"FAILED", "CANCELLED"}:
            raise CliError(f"the message move task {status.lower()}: {task.get('FailureReason')}")
        if time.monotonic() > deadline:
            moved = task.get("ApproximateNumberOfMessagesMoved", 0)
            raise CliError(
                f"the message move task is still running after {timeout:g} s ({moved} moved "
                "so far); it goes on in the background"
            )
        time.sleep(1)


def _copy(sqs: Any, dlq: str, queue: str) -> int:
    """Receive a batch, send it to the queue, delete what was sent; until the DLQ is empty."""
    moved = 0
    while True:
        messages = sqs.receive_message(
            QueueUrl=dlq,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            VisibilityTimeout=RECEIVE_VISIBILITY,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return moved
        entries = [
            {
                "Id": str(i),
                "MessageBody": m["Body"],
                "MessageAttributes": {
                    name: {k: v for k, v in value.items() if k in ATTRIBUTE_FIELDS}
                    for name, value in (m.get("MessageAttributes") or {}).items()
                },
            }
            for i, m in enumerate(messages)
        ]
        sent = sqs.send_message_batch(QueueUrl=queue, Entries=entries)
        done = [messages[int(entry["Id"])] for entry in sent.get("Successful", [])]
        if done:
            sqs.delete_message_batch(
                QueueUrl=dlq,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )
        moved += len(done)
        if sent.get("Failed"):
            first = sent["Failed"][0]
            raise CliError(
                f"moved {moved}, then SQS refused a message ({first.get('Code')}: "
                f"{first.get('Message')}); the rest stay in the DLQ"
            )


def _arn(sqs: Any, url: str) -> str:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return str(attributes["Attributes"]["QueueArn"])
