"""Lambda's SQS event source mapping for one queue.

One poller long-polls the queue and gathers a batch (up to `batch_size`, or until the batching
window closes); up to `concurrency` batches run at once, each an invocation with a real SQS
event. The partial batch response decides what is deleted: the rest comes back when its
visibility timeout (or the handler's ChangeMessageVisibility) says so, and the queue's redrive
policy moves it to the DLQ after `maxReceiveCount` receives. An invocation that raises, times
out or loses its container leaves the whole batch on the queue.

One poller rather than several: moto's ReceiveMessage is not atomic, so concurrent receivers
on one queue could both get the same message.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from crm_to_books_cli.local.emulator import REGION
from crm_to_books_cli.local.runtime import Invocation, RuntimeStopped

log = logging.getLogger(__name__)
Invoke = Callable[[str, dict[str, Any]], Invocation]


def sqs_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """One record of the event Lambda sends for an SQS batch."""
    record = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": {
            name: _attribute(value) for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def _attribute(value: dict[str, Any]) -> dict[str, Any]:
    out = {"stringListValues": [], "binaryListValues": [], "dataType": value["DataType"]}
    if "StringValue" in value:
        out["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        out["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
    return out


def failed_message_ids(invocation: Invocation, message_ids: set[str]) -> set[str] | None:
    """The ids to leave on the queue; None when the whole batch failed (Lambda's rules)."""
    if not invocation.ok:
        return None
    result = invocation.result
    if result is None:
        return set()
    if not isinstance(result, dict):
        return None
    failures = result.get("batchItemFailures") or []
    if not isinstance(failures, list):
        return None
    failed = set()
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not identifier or identifier not in message_ids:
            return None  # an invalid partial response fails the whole batch
        failed.add(identifier)
    return failed


class SqsEventSource:
    def __init__(
        self,
        sqs: Any,
        queue_url: str,
        queue_arn: str,
        function: str,
        invoke: Invoke,
        *,
        batch_size: int,
        batching_window: float,
        concurrency: int,
        poll_seconds: int = 1,  # short, so stop() is quick; Lambda long-polls for 20 s
    ) -> None:
        self.queue_url, self.queue_arn, self.function = queue_url, queue_arn, function
        self._sqs = sqs
        self._invoke = invoke
        self.batch_size, self.batching_window = batch_size, batching_window
        self._poll_seconds = poll_seconds
        self._slots = threading.Semaphore(concurrency)
        self._workers = ThreadPoolExecutor(concurrency, thread_name_prefix=f"sqs-{function}")
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name=f"poll-{function}", daemon=True)

    def start(self) -> None:
        self._poller.start()

    def stop_receiving(self) -> None:
        self._stopping.set()

    def stop(self) -> None:
        """Stop receiving; batches in flight finish (or fail when the runtime stops)."""
        self.stop_receiving()
        if self._poller.is_alive():
            self._poller.join()

    def join(self) -> None:
        self._workers.shutdown(wait=True)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            if not self._slots.acquire(timeout=self._poll_seconds):
                continue  # every container busy: receive nothing we cannot run yet
            try:
                batch = self._gather()
            except (BotoCoreError, ClientError) as exc:
                log.warning("%s: receiving from SQS failed: %s", self.function, exc)
                batch = []
                self._stopping.wait(1)
            if batch:
                self._workers.submit(self._process, batch).add_done_callback(self._finished)
            else:
                self._slots.release()

    def _finished(self, batch: Future[None]) -> None:
        self._slots.release()
        if (exc := batch.exception()) is not None:
            log.error("%s: a batch went wrong (back to the queue): %r", self.function, exc)

    def _gather(self) -> list[dict[str, Any]]:
        batch = self._receive(self.batch_size, self._poll_seconds)
        deadline = time.monotonic() + self.batching_window
        while batch and len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch += self._receive(self.batch_size - len(batch), min(math.ceil(remaining), 20))
        return batch

    def _receive(self, count: int, wait: int) -> list[dict[str, Any]]:
        answer = self._sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=wait,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        return list(answer.get("Messages", []))

    def _process(self, batch: list[dict[str, Any]]) -> None:
        event = {"Records": [sqs_record(m, self.queue_arn) for m in batch]}
        try:
            invocation = self._invoke(self.function, event)
        except RuntimeStopped:
            return
        ids = {m["MessageId"] for m in batch}
        failed = failed_message_ids(invocation, ids)
        if failed is None:
            log.info("%s: batch of %d failed, all back to the queue", self.function, len(batch))
            return
        done = [m for m in batch if m["MessageId"] not in failed]
        if done:
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
            ]
            answer = self._sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
            for failure in answer.get("Failed", []):
                log.warning("%s: could not delete a message: %s", self.function, failure)
        log.info(
            "%s: batch of %d, %d done, %d back to the queue",
            self.function,
            len(batch),
            len(done),
            len(failed),
        )
