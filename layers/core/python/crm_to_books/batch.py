"""SQS batches of import requests, with partial batch failures.

- good record: imported (or failed for good at Zoho: the ledger says so) and deleted;
- retry later: back to the queue after `retry_after` (its visibility timeout), reported;
- rate-limited (nothing reached Zoho), waiting on the service's own rules (the settle time
  after an unknown outcome, another attempt's lease), or not started because the function is
  running out of time: sent again as a fresh message (delayed by `retry_after`) and the
  original deleted, so waiting never counts towards the queue's `maxReceiveCount` and the DLQ
  only ever holds imports that really failed again and again;
- either way the engine asks the message to hold the retry (`MessageHolder`) before it
  writes the record, so the record's next attempt is one a message keeps;
- a wait for a turn that writes nothing (the organization at its limit, before the lease) is
  sent with the lane's others, one `SendMessageBatch` of up to 10 delayed copies, when the lane
  ends (or sooner, when one is due); a copy SQS will not take is sent alone, and one that
  cannot be sent at all leaves its message undeleted (a batch item failure), so nothing is lost;
- poison (can never succeed): recorded as failed where it names a ledger key, and deleted,
  so it neither blocks the batch nor loops until the DLQ.

A batch's organizations are imported at once, each in a thread of its own (a lane, up to
`PARALLEL_RECORDS`), and each organization's records one after the other in its lane: an import
mostly waits on Zoho, so a batch for 10 organizations takes about one import's time instead of
ten, while one organization's records, which wait on that organization's limits anyway, take
turns as before (at once, they would only race each other for its seats and slots). The lanes
share the container's engine (its limiter view, token and connections are each guarded for
that), and each record logs under its own correlation id. In a lane, the records that carry a
turn (`limiter.Reservation`) go first, soonest first: the slots their calls release are then
kept for the lane's others (`turns_first`).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from crm_to_books import triggers
from crm_to_books.errors import InvalidRequest, UnknownOrganization
from crm_to_books.limiter import Reservation
from crm_to_books.models import ImportRequest
from crm_to_books.observability import logger, metrics, tracer
from crm_to_books.ports import ImporterLike, OutcomeLike
from crm_to_books.topology import (
    BATCH_SIZE,
    FUNCTION_TIMEOUT_SECONDS,
    MAX_RECEIVE_COUNT,
    QUEUE_VISIBILITY_TIMEOUT_SECONDS,
)

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

# SQS caps a message's visibility at 12 h from its receipt; the function has run for up to
# its timeout since then.
MAX_VISIBILITY_SECONDS = 12 * 3600 - FUNCTION_TIMEOUT_SECONDS
DEFAULT_RETRY_SECONDS = 60
SQS_MAX_DELAY_SECONDS = 900
SQS_MAX_ATTRIBUTES = 10  # message attributes a message may carry
# The rate slot held for a delayed copy's import (`limiter.Reservation`). A sender's attribute of
# this name gets it nothing: the slot must hold what the reservation says.
RESERVATION_ATTRIBUTE = "crm-to-books-reservation"
# On a retry's copy whose record says when it comes back: sent again to wait for its turn, the
# record is told the new time (`Importer.run`). A sender's attribute of this name costs one
# conditional write that changes nothing.
TIME_KEPT_ATTRIBUTE = "crm-to-books-time-kept"
PARALLEL_RECORDS = BATCH_SIZE  # a batch's organizations imported at once, one thread each
SQS_BATCH_ENTRIES = 10  # SendMessageBatch's most entries
SQS_BATCH_BYTES = 256 * 1024  # its most payload, as the smallest quota any region had
# A lane's waiting copies go before its next record once one is due this soon, so a slow record
# (an import waiting on Zoho) does not hold a copy past its turn.
FLUSH_AHEAD_SECONDS = 2.0

_lane = threading.local()  # the running lane's outbox (`_Outbox`), in a lane's thread


class RetryLater(Exception):
    """The record's import must wait: it goes back to the queue (a batch item failure)."""


def process_batch(
    event: dict[str, Any],
    context: LambdaContext | None,
    *,
    importer: ImporterLike,
    kind: str,
    sqs: SQSClient,
) -> PartialItemFailureResponse:
    # Records are parsed here, not by a BatchProcessor model: a parse failure there would be a
    # batch item failure, and a poison message would come back until the DLQ.
    parked: dict[str, OutcomeLike] = {}  # message id -> parked with others, before its turn
    processor = ParallelBatchProcessor(
        event_type=EventType.SQS,
        raise_on_entire_batch_failure=False,
        kind=kind,
        importer=importer,
        parked=parked,
        sqs=sqs,
    )
    return process_partial_response(
        event={**event, "Records": turns_first(event.get("Records") or [])},
        record_handler=_record_handler(importer, kind, sqs, context, parked),
        processor=processor,
        context=context,
    )


class ParallelBatchProcessor(BatchProcessor):
    """Powertools' `BatchProcessor` (partial batch failures, as it reports them), importing a
    batch's organizations at once, each in a thread of its own (a *lane*), and each
    organization's records one after the other in its lane, in `turns_first` order. Each
    record's outcome is its own: one that raises is that record's failure only."""

    def __init__(
        self,
        *args: Any,
        kind: str,
        importer: ImporterLike | None = None,
        parked: dict[str, OutcomeLike] | None = None,
        sqs: SQSClient | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._kind = kind
        self._importer = importer
        self._parked = parked if parked is not None else {}  # message id -> parked together
        self._sqs = sqs
        self._reporting = threading.Lock()  # lanes report a copy not sent at once

    def process(self) -> list[tuple[Any, ...]]:
        lanes = self._lanes() if len(self.records) > 1 else [self.records]
        if len(lanes) < 2:
            return self._process_lane(self.records)  # one organization: in this thread
        run = tracer.in_threads(self._process_lane)
        with ThreadPoolExecutor(min(len(lanes), PARALLEL_RECORDS), "lane") as pool:
            outcomes = [o for lane in pool.map(run, lanes) for o in lane]
        # Reported in the batch's order, as the sequential processor reports them.
        order = {id(record): i for i, record in enumerate(self.records)}
        for reported in (self.success_messages, self.fail_messages):
            reported.sort(key=lambda m: order.get(id(getattr(m, "raw_event", m)), 0))
        return outcomes

    def _lanes(self) -> list[list[dict[str, Any]]]:
        """The batch's records by organization, in order; a record naming none (poison) is a
        lane of its own."""
        lanes: dict[str, list[dict[str, Any]]] = {}
        for record in self.records:
            about = triggers.salvage(record, self._kind)
            lane = f"org:{about.organization_id}" if about else f"record:{id(record)}"
            lanes.setdefault(lane, []).append(record)
        return list(lanes.values())

    def _process_lane(self, lane: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        _lane.outbox = outbox = _Outbox(self._sqs) if self._sqs is not None else None
        try:
            done: list[tuple[Any, ...]] = []
            # Before the first record, and once more after the first parked by its own attempt
            # (which saw the park): a transaction that failed twice is not tried again.
            asks, ask = 2, True
            for i, record in enumerate(lane):
                if ask:
                    asks -= 1
                    self._park_together(lane[i:])
                if outbox is not None and outbox.due_within(FLUSH_AHEAD_SECONDS):
                    self._unsent(outbox.flush(), done)
                together = record["messageId"] in self._parked
                done.append(self._process_record(record))
                ask = asks > 0 and done[-1][1] == "parked" and not together
                if outbox is not None and outbox.full:
                    self._unsent(outbox.flush(), done)
            if outbox is not None:
                self._unsent(outbox.flush(), done)
            return done
        finally:
            _lane.outbox = None
            logger.thread_safe_clear_keys()  # what this thread logs next is not the lane's

    def _unsent(self, records: list[dict[str, Any]], done: list[tuple[Any, ...]]) -> None:
        """Records whose delayed copy could not be sent: not deleted after all (a batch item
        failure), so the queue brings each back when its visibility ends. No record was
        written for them (a copy waits in the outbox only then)."""
        for raw in records:
            try:
                raise RetryLater("its delayed copy could not be sent")
            except RetryLater:
                info = sys.exc_info()
            with self._reporting:  # other lanes only append meanwhile: an index stays true
                for i, reported in enumerate(self.success_messages):
                    if reported is raw:  # type: ignore[comparison-overlap]
                        del self.success_messages[i]
                        break
                failed = self.failure_handler(SQSRecord(raw), info)
            done[:] = [failed if entry[2] is raw else entry for entry in done]

    def _park_together(self, records: list[dict[str, Any]]) -> None:
        """Before the lane's first record, and after the first parked: the lane's records yet to
        run that this container's view shows may not be sent before a park's end (their
        organization parked at its daily cap) are parked together, in one transaction
        (`Attempt.park_known`), instead of a lease and a park each; the handler then reports
        them parked. Not a record parked so already, nor one that carries a turn, nor one that
        does not parse (each takes its own path), nor a last record alone."""
        if self._importer is None or len(records) < 2:
            return  # one record: its own attempt parks it, with no parse of it here first
        try:
            requests: dict[int, tuple[str, ImportRequest]] = {}
            for raw in records:
                if _carried(raw, "") is not None or raw["messageId"] in self._parked:
                    continue
                try:
                    request = triggers.from_sqs_record(raw, self._kind)
                    self._importer.settings.organization(request.organization_id)
                except (InvalidRequest, UnknownOrganization):
                    continue
                requests[id(request)] = (raw["messageId"], request)
            if not requests:
                return
            org = next(iter(requests.values()))[1].organization_id
            parked = self._importer.park_known(
                [r for _, r in requests.values() if r.organization_id == org]
            )
        except Exception:  # each import then takes its own attempt, which is always safe
            logger.exception("parking a lane's imports together failed")
            return
        for outcome in parked:
            self._parked[requests[id(outcome.request)][0]] = outcome


def turns_first(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The batch in the order it is imported: the records that carry a turn first, soonest
    first, then the others as they came (a queue's batch comes in no promised order). The slots
    the first ones' calls release are then kept for the others, which wait without a turn
    (`RateLimiter.claim`), in this invocation."""

    def due(record: dict[str, Any]) -> float:
        turn = _carried(record, "")
        return turn.start_at if turn is not None else math.inf

    return sorted(records, key=due)


def _carried(raw: dict[str, Any], organization_id: str) -> Reservation | None:
    """The rate slot held for a message's import, if it carries one."""
    value = (raw.get("messageAttributes") or {}).get(RESERVATION_ATTRIBUTE)
    return Reservation.decode(organization_id, (value or {}).get("stringValue"))


def _record_handler(
    importer: ImporterLike,
    kind: str,
    sqs: SQSClient,
    context: LambdaContext | None,
    parked: dict[str, OutcomeLike] | None = None,
) -> Callable[[SQSRecord], str]:
    budget_ms = 1000 * (
        importer.settings.zoho_connect_timeout + importer.settings.zoho_read_timeout + 2
    )

    def handle(record: SQSRecord) -> str:
        # Per thread: the batch's records are imported at once, each logs as its own.
        logger.thread_safe_append_keys(correlation_id=record.message_id)
        together = (parked or {}).pop(record.message_id, None)
        if together is not None:  # parked with the lane's others: the re-drive job owns it
            request = together.request
            logger.thread_safe_append_keys(correlation_id=request.correlation_id)
            log = {"kind": request.kind, "crm_id": request.crm_id, "result": together.result}
            logger.info("import parked", extra={**log, "together": True})
            return "parked"
        message = MessageHolder(sqs, record, getattr(_lane, "outbox", None))
        if context is not None and context.get_remaining_time_in_millis() < budget_ms:
            # Not started: another invocation takes it (with the rate slot held for it).
            if not message.hold(0, fresh=True, keep_reservation=True):
                raise RetryLater("requeue failed")
            return "requeued"
        try:
            request = triggers.from_sqs_record(record.raw_event, kind)
            importer.settings.organization(request.organization_id)
        except (InvalidRequest, UnknownOrganization) as exc:
            _reject(importer, record, kind, exc.message)
            return "poison"
        logger.thread_safe_append_keys(correlation_id=request.correlation_id)
        message.tenant = request.organization_id
        outcome = importer.run(
            request,
            last_delivery=_last_delivery(record, sqs),
            holder=message,
            reservation=message.reservation(request.organization_id),
        )
        log = {"kind": request.kind, "crm_id": request.crm_id, "result": outcome.result}
        if outcome.result != "retry_later":
            logger.info("import done", extra=log)
            return outcome.result
        if outcome.parked:  # the re-drive job owns it now; the message is done
            logger.info("import parked", extra=log)
            return "parked"
        if message.requeued:  # a fresh copy holds it: this one is deleted
            turn = message.turn  # a rate slot held for it: when its call may start
            at = {"turn_at": round(turn.start_at, 2)} if turn is not None else {}
            at |= {"together": True} if message.together else {}  # the lane's SendMessageBatch
            logger.info("import requeued", extra={**log, "retry_after": outcome.retry_after, **at})
            return "requeued"
        # This message holds it: back when its visibility (set before the record was written,
        # or the queue's own timeout if that failed) ends.
        logger.info("import deferred", extra={**log, "retry_after": outcome.retry_after})
        raise RetryLater(f"retry after {outcome.retry_after} s")

    return handle


def _reject(importer: ImporterLike, record: SQSRecord, kind: str, reason: str) -> None:
    metrics.add_metric(name="PoisonMessages", unit=MetricUnit.Count, value=1)
    about = triggers.salvage(record.raw_event, kind)
    if about is not None and about.organization_id not in importer.settings.organizations:
        about = None  # no one can read an unknown organization's records: write none
    logger.warning(
        "poison message deleted",
        extra={"reason": reason, "body": record.body[:500], "recorded": about is not None},
    )
    if about is not None:
        importer.reject(about.kind, about.organization_id, about.crm_id, about.source, reason)


def _last_delivery(record: SQSRecord, sqs: SQSClient) -> bool:
    """The queue dead-letters the message if this receive fails too."""
    try:
        count = int(record.attributes.approximate_receive_count)
    except (KeyError, TypeError, ValueError):
        return False
    # A first delivery is never the last (no redrive policy here allows 1 receive): the hot
    # path pays no extra call.
    return count >= 2 and count >= _max_receive_count(record, sqs)


# queue URL -> its redrive policy's maxReceiveCount, read once per container.
_max_receives: dict[str, int] = {}


def _max_receive_count(record: SQSRecord, sqs: SQSClient) -> int:
    """The queue's own maxReceiveCount: the ledger's DLQ mark must follow the policy the queue
    has (a stage, the local stack or an operator may set another than topology's)."""
    try:
        url = triggers.queue_url(record.event_source_arn, sqs.meta.endpoint_url)
        if url not in _max_receives:
            answer = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
            policy = json.loads(answer["Attributes"]["RedrivePolicy"])
            _max_receives[url] = int(policy["maxReceiveCount"])
        return _max_receives[url]
    except Exception:  # unreadable: the count the stack deploys, and ask again next time
        logger.warning("could not read the queue's redrive policy", exc_info=True)
        return MAX_RECEIVE_COUNT


def _visibility(retry_after: float | None) -> int:
    seconds = DEFAULT_RETRY_SECONDS if retry_after is None else math.ceil(retry_after)
    return max(0, min(seconds, MAX_VISIBILITY_SECONDS))


class MessageHolder:
    """The SQS message an import came in: how it holds a retry (`ports.Holder`). Called by the
    engine before it writes the record, so the record never promises a time no message keeps.
    - `fresh`: waits of the service's own (rate limits, the settle time, another attempt's
      lease) go into a new message, delayed, so they never count towards `maxReceiveCount`;
    - else this message comes back when its visibility ends (a receive it spent: failures).
    """

    def __init__(self, sqs: SQSClient, record: SQSRecord, outbox: _Outbox | None = None) -> None:
        self._sqs = sqs
        self._record = record
        self._outbox = outbox
        self.requeued = False
        self.together = False  # the fresh copy waits in the lane's outbox, sent with others
        self.turn: Reservation | None = None  # the turn the fresh copy carries, if any
        self.tenant: str | None = record.attributes.message_group_id

    @property
    def fallback_seconds(self) -> float:
        """When the message comes back if `hold` fails: its queue's visibility timeout."""
        return float(QUEUE_VISIBILITY_TIMEOUT_SECONDS)

    @property
    def keeps_a_time(self) -> bool:
        """Its record may say a time this message was to keep: a retry's copy, or a message
        back after a receive it spent (the attempt's failure, or its death)."""
        if TIME_KEPT_ATTRIBUTE in (self._record.raw_event.get("messageAttributes") or {}):
            return True
        try:
            return int(self._record.attributes.approximate_receive_count) >= 2
        except (KeyError, TypeError, ValueError):
            return False

    def reservation(self, organization_id: str) -> Reservation | None:
        """The rate slot held for this message's import, if it carries one."""
        return _carried(self._record.raw_event, organization_id)

    def hold(
        self,
        seconds: float,
        fresh: bool,
        reservation: Reservation | None = None,
        *,
        keep_reservation: bool = False,
        keeps_a_time: bool = False,
        later: bool = False,
    ) -> bool:
        wait = _visibility(seconds)
        record = self._record
        url = triggers.queue_url(record.event_source_arn, self._sqs.meta.endpoint_url)
        try:
            if fresh:
                attributes: dict[str, Any] = {
                    name: {
                        "DataType": value.get("dataType", "String"),
                        "StringValue": value["stringValue"],
                    }
                    for name, value in (record.raw_event.get("messageAttributes") or {}).items()
                    if value.get("stringValue") is not None
                    and (keep_reservation or name != RESERVATION_ATTRIBUTE)
                }
                carried = reservation if len(attributes) < SQS_MAX_ATTRIBUTES else None
                if carried is not None:
                    attributes[RESERVATION_ATTRIBUTE] = {
                        "DataType": "String",
                        "StringValue": carried.encode(),
                    }
                if keeps_a_time and len(attributes) < SQS_MAX_ATTRIBUTES:
                    attributes[TIME_KEPT_ATTRIBUTE] = {"DataType": "String", "StringValue": "1"}
                send: dict[str, Any] = {
                    "QueueUrl": url,
                    "MessageBody": record.body,
                    "DelaySeconds": max(0, min(wait, SQS_MAX_DELAY_SECONDS)),
                    "MessageAttributes": attributes,
                }
                if self.tenant:  # SQS fair queues' tenant: the organization, once known
                    send["MessageGroupId"] = self.tenant
                if later and self._outbox is not None:
                    self._outbox.add(record.raw_event, send, time.time() + wait)
                    self.together = True
                else:
                    self._sqs.send_message(**send)
                self.requeued = True
                self.turn = carried
            else:
                self._sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=record.receipt_handle, VisibilityTimeout=wait
                )
        except (BotoCoreError, ClientError):
            logger.warning("could not hold the message for the retry", exc_info=True)
            return False
        return True


class _Outbox:
    """A lane's delayed copies that nothing waits on (`MessageHolder.hold(later=True)`): sent
    together, `SendMessageBatch` of up to 10, when the lane ends, 10 are waiting or one is due
    within `FLUSH_AHEAD_SECONDS` (before the lane's next record). Each copy's delay is counted
    from its hold, not from the send. A copy SQS refuses in the batch is sent alone; one that
    cannot be sent is its record's, returned by `flush` (the handler then reports its message
    failed)."""

    def __init__(self, sqs: SQSClient, clock: Callable[[], float] = time.time) -> None:
        self._sqs = sqs
        self._clock = clock
        self._waiting: list[tuple[dict[str, Any], dict[str, Any], float]] = []

    @property
    def full(self) -> bool:
        return len(self._waiting) >= SQS_BATCH_ENTRIES

    def add(self, raw: dict[str, Any], send: dict[str, Any], due: float) -> None:
        self._waiting.append((raw, send, due))

    def due_within(self, seconds: float) -> bool:
        """A waiting copy is due to come back within `seconds`."""
        return any(due - self._clock() <= seconds for _, _, due in self._waiting)

    def flush(self) -> list[dict[str, Any]]:
        waiting, self._waiting = self._waiting, []
        unsent: list[dict[str, Any]] = []
        for chunk in _chunks(waiting):
            now = self._clock()
            sends = [
                {**send, "DelaySeconds": max(0, min(math.ceil(due - now), SQS_MAX_DELAY_SECONDS))}
                for _, send, due in chunk
            ]
            for i in self._send_batch(sends):
                try:
                    self._sqs.send_message(**sends[i])
                except (BotoCoreError, ClientError):
                    # Its message is reported failed: the queue brings it back (another lane's
                    # record may have logged last in this thread, so the message is named).
                    logger.warning(
                        "could not send a delayed copy: its message comes back when its "
                        "visibility ends",
                        extra={"message_id": chunk[i][0].get("messageId")},
                        exc_info=True,
                    )
                    unsent.append(chunk[i][0])
        return unsent

    def _send_batch(self, sends: list[dict[str, Any]]) -> Sequence[int]:
        """The entries SQS did not take (all of them if the call failed)."""
        url = sends[0]["QueueUrl"]
        entries = [
            {"Id": str(i), **{k: v for k, v in send.items() if k != "QueueUrl"}}
            for i, send in enumerate(sends)
        ]
        try:
            answer = self._sqs.send_message_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]
        except (BotoCoreError, ClientError):
            logger.warning("could not send delayed copies together", exc_info=True)
            return range(len(sends))
        failed = [int(f["Id"]) for f in answer.get("Failed") or []]
        if failed:
            logger.warning("SQS refused delayed copies", extra={"failed": answer.get("Failed")})
        return failed


def _chunks(
    waiting: list[tuple[dict[str, Any], dict[str, Any], float]],
) -> list[list[tuple[dict[str, Any], dict[str, Any], float]]]:
    """SendMessageBatch's calls: one queue each, at most 10 entries and its payload quota."""
    chunks: list[list[tuple[dict[str, Any], dict[str, Any], float]]] = []
    size = 0
    for entry in waiting:
        send = entry[1]
        weight = len(send["MessageBody"].encode()) + len(json.dumps(send["MessageAttributes"]))
        last = chunks[-1] if chunks else None
        if (
            last is None
            or len(last) >= SQS_BATCH_ENTRIES
            or size + weight > SQS_BATCH_BYTES
            or last[0][1]["QueueUrl"] != send["QueueUrl"]
        ):
            chunks.append([entry])
            size = weight
        else:
            last.append(entry)
            size += weight
    return chunks
