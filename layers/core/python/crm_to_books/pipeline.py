"""One import, from a parsed request to a ledger record (DESIGN.md "One import, step by step").

    ledger lease -> token -> [look-up first, if an earlier outcome is unknown] -> rate-limit
    permit -> Zoho import -> classify -> ledger record (+ permit release, same transaction)
    -> outcome event

Zoho outcomes never raise: they end as a record that says what happened and what comes next.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from aws_lambda_powertools.metrics import MetricUnit, single_metric

from crm_to_books.entities import Entity, get_entity
from crm_to_books.errors import ConnectionBroken
from crm_to_books.events import OutcomePublisher
from crm_to_books.ledger import AlreadySucceeded, Busy, Claim, Completion, Ledger
from crm_to_books.ledger import to_record as ledger_record
from crm_to_books.limiter import Denied, Permit, RateLimiter, next_utc_midnight
from crm_to_books.models import ImportError_, ImportRecord, ImportRequest, Status
from crm_to_books.observability import logger, metrics, tracer
from crm_to_books.settings import Organization, Settings, get_settings
from crm_to_books.tokens import TokenProvider, TokenUnavailable
from crm_to_books.topology import (
    METRIC_IMPORT_FAILED,
    METRIC_IMPORT_SUCCEEDED,
    METRIC_IMPORTS,
    METRIC_ZOHO_LATENCY,
    METRIC_ZOHO_THROTTLED,
    METRICS_NAMESPACE,
    SERVICE_NAME,
    TOKEN_KEEPER_RATE_MINUTES,
)
from crm_to_books.zoho import AccessToken, Category, ZohoAnswer, ZohoClient

Result = Literal["imported", "already_imported", "failed", "retry_later"]
BROKEN_RECHECK_SECONDS = 300.0
CONNECTION_BROKEN = "connection_broken"  # the error category of imports parked on one
# A retrying, unparked record this long past its next attempt has lost its message (the send
# failed, the queue's 4-day retention ran out, a job died between taking and sending it): the
# re-drive job sends it again. A message still waiting in a backlog that long gets a twin;
# the ledger answers the second without calling Zoho.
STRANDED_AFTER_SECONDS = 86_400.0
PARK_AFTER_SECONDS = 900.0  # longer waits than SQS's 15-minute delay are parked in the ledger
MAX_BACKOFF_SECONDS = 900.0
SHORT_WAIT_SECONDS = 1.0


@dataclass(slots=True)
class ImportOutcome:
    request: ImportRequest
    record: ImportRecord
    result: Result
    retry_after: float | None = None
    zoho_data: dict[str, Any] | None = None
    error: ImportError_ | None = None
    rate_limited: bool = False
    parked: bool = False  # retry_later held by the ledger (re-drive job), not by a queue message
    recorded: bool = True  # False: the ledger kept nothing of this attempt (see `hold`)


class _Stop(Exception):
    """Ends an attempt early with its completion."""

    def __init__(self, done: Completion, rate_limited: bool = False) -> None:
        super().__init__(done.detail)
        self.done = done
        self.rate_limited = rate_limited


class Importer:
    """Runs imports. Every dependency has a production default built on first use."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        ledger: Ledger | None = None,
        limiter: RateLimiter | None = None,
        tokens: TokenProvider | None = None,
        zoho: ZohoClient | None = None,
        events: OutcomePublisher | None = None,
        sqs: Any = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings or get_settings()
        s = self.settings
        self.zoho = zoho or ZohoClient(
            connect_timeout=s.zoho_connect_timeout, read_timeout=s.zoho_read_timeout
        )
        self.ledger = ledger or Ledger(s.ledger_table, clock=clock)
        self.limiter = limiter or RateLimiter(
            s.state_table, window_seconds=s.rate_window_seconds, clock=clock
        )
        self.tokens = tokens or TokenProvider(s, self.zoho, clock=clock)
        self.events = events or OutcomePublisher(s.event_bus_name)
        self._sqs = sqs
        self._clock = clock
        self._sleep = sleep

    @property
    def sqs(self) -> Any:
        if self._sqs is None:
            from crm_to_books import aws

            self._sqs = aws.client("sqs")
        return self._sqs

    # --- the import ---------------------------------------------------------------------------
    def run(
        self, request: ImportRequest, *, last_delivery: bool = False, hold: bool = True
    ) -> ImportOutcome:
        """Import now. `last_delivery`: the queue will dead-letter the message if this fails.
        `hold=False` (a synchronous caller that will retry by itself): when rate-limited, the
        ledger keeps no trace of this attempt instead of a `retrying` record nobody owns."""
        s = self.settings
        entity = get_entity(request.kind)
        org = s.organization(request.organization_id)
        state = self.ledger.begin(request, uuid.uuid4().hex, s.attempt_lease_seconds)
        if isinstance(state, AlreadySucceeded):
            books_id = state.record.books_id
            known = {entity.books_id_key: books_id} if books_id else {}
            return ImportOutcome(request, state.record, "already_imported", zoho_data=known)
        if isinstance(state, Busy):
            return ImportOutcome(
                request, state.record, "retry_later", retry_after=state.retry_after
            )
        claim = state
        permit: Permit | None = None
        data: dict[str, Any] | None = None
        rate_limited = False
        try:
            done, permit, data = self._attempt(claim, entity, org)
        except _Stop as stop:
            done, rate_limited = stop.done, stop.rate_limited
        except Exception:
            # Unexpected: Zoho may have been called. Leave a record that forces a look-up.
            self._complete(
                claim,
                Completion(
                    Status.RETRYING,
                    needs_lookup=True,
                    next_attempt_at=self._clock() + 60,
                    detail="The attempt failed unexpectedly; the record will be looked up in Books "
                    "before any new import.",
                ),
                None,
            )
            raise
        rate_limited = rate_limited or bool(done.error and done.error.category == "rate_limited")
        if rate_limited and not hold and not done.needs_lookup:
            also = [self.limiter.release_update(permit)] if permit else None
            if self.ledger.abandon(claim, also):
                wait = max((done.next_attempt_at or self._clock()) - self._clock(), 1.0)
                previous = claim.previous
                record = ledger_record(previous) if previous else claim.record
                return ImportOutcome(
                    request,
                    record,
                    "retry_later",
                    retry_after=wait,
                    error=done.error,
                    rate_limited=True,
                    recorded=bool(previous),
                )
        # Rate-limited messages are sent again fresh (batch.py), never dead-lettered.
        if (
            done.status is Status.RETRYING
            and not done.parked
            and last_delivery
            and not rate_limited
        ):
            done.in_dlq = True
            done.detail = (done.detail or "") + (
                " This was the queue's last delivery: the message goes to the dead-letter queue "
                "(`crm-to-books redrive` sends it back)."
            )
        record = self._complete(claim, done, permit)
        self._count(record)
        if record.status in (Status.SUCCEEDED, Status.FAILED):
            self.events.publish(record, request.correlation_id)
        logger.info(
            "import done",
            extra={
                "kind": request.kind,
                "organization_id": request.organization_id,
                "crm_id": request.crm_id,
                "status": record.status.value,
                "books_id": record.books_id,
                "attempts": record.attempts,
            },
        )
        result: Result = {
            Status.SUCCEEDED: "imported",
            Status.FAILED: "failed",
        }.get(record.status, "retry_later")  # type: ignore[assignment]
        retry_after = None
        if result == "retry_later":
            retry_after = max((done.next_attempt_at or self._clock()) - self._clock(), 1.0)
        return ImportOutcome(
            request,
            record,
            result,
            retry_after=retry_after,
            zoho_data=data,
            error=record.last_error if result != "imported" else None,
            rate_limited=rate_limited,
            parked=done.parked,
        )

    def _attempt(
        self, claim: Claim, entity: Entity, org: Organization
    ) -> tuple[Completion, Permit | None, dict[str, Any] | None]:
        request = claim.request
        token = self._token(org.connection)
        if claim.needs_lookup:
            answer, token = self._call(
                lambda t: self.zoho.lookup(t, entity, request.organization_id, request.crm_id),
                token,
                org,
                request,
                release_now=True,
            )[:2]
            if answer.category is Category.SUCCESS and answer.data:
                books_id = entity.books_id(answer.data)
                return (
                    Completion(
                        Status.SUCCEEDED,
                        books_id=books_id,
                        detail="An earlier attempt's outcome was unknown; the record was found in "
                        "Books, so it was not imported again.",
                    ),
                    None,
                    answer.data,
                )
            if answer.category is not Category.SUCCESS:
                raise _Stop(
                    self._failure(claim, answer, looking_up=True),
                    rate_limited=answer.category.rate_limited,
                )
        answer, token, permit = self._call(
            lambda t: self.zoho.import_record(t, entity, request.organization_id, request.crm_id),
            token,
            org,
            request,
            release_now=False,
        )
        if answer.category is Category.SUCCESS:
            books_id = entity.books_id(answer.data)
            if books_id:
                return (
                    Completion(
                        Status.SUCCEEDED,
                        books_id=books_id,
                        zoho_calls=1,
                        detail=f"Imported into Zoho Books as {entity.books_id_key} {books_id}.",
                    ),
                    permit,
                    answer.data,
                )
            answer = ZohoAnswer(
                Category.UNKNOWN,
                answer.http_status,
                answer.zoho_code,
                "Zoho answered success without a Books id",
            )
        done = self._failure(claim, answer, looking_up=False)
        done.zoho_calls = 0 if answer.category is Category.NOT_SENT else 1
        return done, permit, None

    def _token(self, connection: str) -> AccessToken:
        now = self._clock()
        try:
            return self.tokens.get(connection)
        except ConnectionBroken as exc:
            raise _Stop(
                Completion(
                    Status.RETRYING,
                    parked=True,
                    next_attempt_at=now + BROKEN_RECHECK_SECONDS,
                    error=ImportError_(message=exc.message, category=CONNECTION_BROKEN),
                    detail=f"Parked: {exc.message} It resumes by itself once the connection works.",
                )
            ) from None
        except TokenUnavailable as exc:
            wait = max(exc.retry_after, 1.0)
            raise _Stop(
                Completion(
                    Status.RETRYING,
                    parked=wait > PARK_AFTER_SECONDS,
                    next_attempt_at=now + wait,
                    error=ImportError_(message=exc.message, category="auth"),
                    detail=f"Waiting for a Zoho access token ({exc.message}); "
                    f"next attempt in {math.ceil(wait)} s.",
                )
            ) from None

    def _permit(self, org: Organization, request: ImportRequest) -> Permit:
        got = self.limiter.acquire(request.organization_id, org)
        if isinstance(got, Denied) and got.retry_after <= SHORT_WAIT_SECONDS and not got.parks:
            # A slot frees within a second: one short wait here beats a trip through the
            # queue, whose delays come in whole seconds (and Retry-After too). Once, no spin.
            self._sleep(got.retry_after)
            got = self.limiter.acquire(request.organization_id, org)
        if isinstance(got, Permit):
            return got
        raise _Stop(self._denied(got), rate_limited=True)

    def _denied(self, denied: Denied) -> Completion:
        reasons = {
            "per_minute": "the organization's per-minute Zoho limit is used up",
            "concurrency": "the organization's concurrent Zoho calls are at their cap",
            "daily": "the organization's daily Zoho limit is used up",
            "blocked": "Zoho asked this service to slow down for this organization",
            "contention": "many imports for this organization are starting at once",
        }
        why = reasons.get(denied.reason, denied.reason)
        return Completion(
            Status.RETRYING,
            parked=denied.parks or denied.retry_after > PARK_AFTER_SECONDS,
            next_attempt_at=denied.until,
            error=ImportError_(message=why, category="rate_limited"),
            detail=f"Not sent to Zoho: {why}; next attempt in {math.ceil(denied.retry_after)} s.",
        )

    def _call(
        self,
        call: Callable[[AccessToken], ZohoAnswer],
        token: AccessToken,
        org: Organization,
        request: ImportRequest,
        release_now: bool,
    ) -> tuple[ZohoAnswer, AccessToken, Permit | None]:
        """One Zoho call under a permit; on 401, drop the token, refresh once, retry once."""
        permit: Permit | None = self._permit(org, request)
        answer = self._timed(call, token, request)
        if answer.category is Category.AUTH and permit is not None:
            logger.info(
                "Zoho refused the access token; refreshing once",
                extra={"zoho_code": answer.zoho_code},
            )
            self.tokens.invalidate(org.connection, token)
            self.limiter.release(permit)
            permit = None
            token = self._token(org.connection)
            permit = self._permit(org, request)
            answer = self._timed(call, token, request)
        if answer.category.rate_limited:
            self._observe_throttle(request.organization_id, answer)
        if release_now and permit is not None:
            self.limiter.release(permit)
            permit = None
        return answer, token, permit

    @tracer.capture_method(capture_response=False)
    def _timed(
        self, call: Callable[[AccessToken], ZohoAnswer], token: AccessToken, request: ImportRequest
    ) -> ZohoAnswer:
        answer = call(token)
        metrics.add_metric(
            name=METRIC_ZOHO_LATENCY, unit="Milliseconds", value=round(answer.elapsed * 1000, 1)
        )
        tracer.put_annotation("zoho_category", answer.category.value)
        return answer

    def _observe_throttle(self, organization_id: str, answer: ZohoAnswer) -> None:
        metrics.add_metric(name=METRIC_ZOHO_THROTTLED, unit="Count", value=1)
        now = self._clock()
        if answer.category is Category.RATE_DAILY:
            self.limiter.block(organization_id, next_utc_midnight(now), "daily")
        elif answer.category is Category.RATE_MINUTE:
            wait = float(answer.rate.reset or self.settings.rate_window_seconds)
            self.limiter.block(
                organization_id, now + min(wait, self.settings.rate_window_seconds), "blocked"
            )
        logger.warning(
            "Zoho throttled this organization",
            extra={
                "organization_id": organization_id,
                "zoho_code": answer.zoho_code,
            },
        )

    def _failure(self, claim: Claim, answer: ZohoAnswer, looking_up: bool) -> Completion:
        now = self._clock()
        error = ImportError_(
            http_status=answer.http_status,
            zoho_code=answer.zoho_code,
            message=answer.message,
            category=_CATEGORY_NAMES.get(answer.category, answer.category.value),
        )
        said = f"Zoho said: {answer.message}" + (
            f" (code {answer.zoho_code}, HTTP {answer.http_status})" if answer.http_status else ""
        )
        if answer.category is Category.AUTH:  # still refused after a fresh token
            return Completion(
                Status.FAILED,
                error=error,
                detail=f"Failed: Zoho refused a freshly issued access token. {said}. Check that "
                "the connection's refresh token has the scope this import needs "
                f"({get_entity(claim.request.kind).scope}) and access to the organization.",
            )
        if answer.category is Category.PERMANENT:
            return Completion(
                Status.FAILED,
                error=error,
                detail=f"Failed: {said}. Not retried; fix the cause and import again.",
            )
        if answer.category.rate_limited:
            if answer.category is Category.RATE_DAILY:
                until = next_utc_midnight(now)
            elif answer.category is Category.RATE_CONCURRENCY:
                until = now + random.uniform(1, 3)
            else:
                until = now + self.settings.rate_window_seconds
            return Completion(
                Status.RETRYING,
                error=error,
                next_attempt_at=until,
                parked=until - now > PARK_AFTER_SECONDS,
                needs_lookup=claim.needs_lookup,
                detail=f"Throttled by Zoho. {said}. Next attempt in {math.ceil(until - now)} s.",
            )
        wait = self._backoff(claim)
        unknown = answer.category is Category.UNKNOWN or looking_up
        needs_lookup = claim.needs_lookup or (answer.category is Category.UNKNOWN)
        what = (
            "The outcome is unknown (Zoho may have imported it); the record will be looked up "
            "in Books before any new import."
            if unknown and needs_lookup
            else "The request did not reach Zoho."
            if answer.category is Category.NOT_SENT
            else ""
        )
        return Completion(
            Status.RETRYING,
            error=error,
            needs_lookup=needs_lookup,
            next_attempt_at=now + wait,
            parked=wait > PARK_AFTER_SECONDS,
            detail=f"{said}. {what} Next attempt in {math.ceil(wait)} s.".replace("  ", " "),
        )

    def _backoff(self, claim: Claim) -> float:
        tries = int(claim.item.get("retries", 0))
        claim.item["retries"] = tries + 1
        return float(min(MAX_BACKOFF_SECONDS, 5 * 2 ** min(tries, 8)) * random.uniform(0.8, 1.2))

    def _complete(self, claim: Claim, done: Completion, permit: Permit | None) -> ImportRecord:
        if done.status is Status.RETRYING and claim.needs_lookup:
            done.needs_lookup = True  # an attempt that ended before its look-up keeps the duty
        done.extra["retries"] = (
            0 if done.status is not Status.RETRYING else int(claim.item.get("retries", 0))
        )
        also = [self.limiter.release_update(permit)] if permit else None
        record = self.ledger.complete(claim, done, also)
        if permit:
            self.limiter.released(permit)
        return record

    def _count(self, record: ImportRecord) -> None:
        if record.status is Status.SUCCEEDED:
            metrics.add_metric(name=METRIC_IMPORT_SUCCEEDED, unit="Count", value=1)
        elif record.status is Status.FAILED:
            metrics.add_metric(name=METRIC_IMPORT_FAILED, unit="Count", value=1)
        # The same outcome by kind: its own EMF line, so the alarms' metrics keep one dimension.
        with single_metric(
            name=METRIC_IMPORTS,
            unit=MetricUnit.Count,
            value=1,
            namespace=METRICS_NAMESPACE,
            default_dimensions={"service": SERVICE_NAME},
        ) as metric:
            metric.add_dimension(name="kind", value=record.kind)
            metric.add_dimension(name="outcome", value=record.status.value)

    # --- around the import ---------------------------------------------------------------------
    def accept(self, request: ImportRequest) -> ImportRecord:
        """Async HTTP: record `queued` (unless done or under way); the caller then enqueues."""
        self.settings.organization(request.organization_id)
        record, _ = self.ledger.mark_queued(request)
        return record

    def enqueue(self, request: ImportRequest, delay_seconds: float = 0) -> None:
        url = self.settings.queue_urls.get(request.kind)
        if not url:
            from crm_to_books.errors import ConfigurationError

            raise ConfigurationError(f"QUEUE_URLS has no queue for kind {request.kind!r}")
        attributes = {"source": {"DataType": "String", "StringValue": request.source}}
        if request.correlation_id:
            attributes["correlation_id"] = {
                "DataType": "String",
                "StringValue": request.correlation_id,
            }
        self.sqs.send_message(
            QueueUrl=url,
            MessageBody=json.dumps(
                {"organization_id": request.organization_id, "crm_id": request.crm_id}
            ),
            DelaySeconds=int(min(max(delay_seconds, 0), 900)),
            MessageAttributes=attributes,
        )

    def reject(
        self, kind: str, organization_id: str, crm_id: str, source: str, reason: str
    ) -> ImportRecord | None:
        return self.ledger.reject(organization_id, kind, crm_id, source, reason)

    def redrive_due(self) -> int:
        """Re-enqueue parked imports whose time has come (daily cap reset, token block over),
        those parked on a broken connection as soon as it works again (`crm-to-books connect`
        replaced its refresh token), and imports whose attempt died with nobody to retry them
        (the import then starts with a look-up, so it cannot be duplicated)."""
        sent, failures = 0, 0
        repaired = {
            name: self._usable(name)
            for name in {org.connection for org in self.settings.organizations.values()}
        }
        for organization_id, org in self.settings.organizations.items():
            early = [CONNECTION_BROKEN] if repaired[org.connection] else []
            due = self.ledger.due(organization_id, early, stranded_after=STRANDED_AFTER_SECONDS)
            for record in [*due, *self.ledger.abandoned(organization_id)]:
                if record.kind not in self.settings.queue_urls:
                    logger.warning("no queue for a re-drive", extra={"kind": record.kind})
                    continue
                taken = self.ledger.unpark(record) if record.parked else None
                if record.parked and taken is None:
                    continue  # another run took it, or an import finished it
                try:
                    self.enqueue(
                        ImportRequest(
                            kind=record.kind,
                            organization_id=record.organization_id,
                            crm_id=record.crm_id,
                            source="redrive",
                        )
                    )
                except Exception:
                    failures += 1
                    logger.exception(
                        "re-drive could not enqueue an import",
                        extra={"kind": record.kind, "crm_id": record.crm_id},
                    )
                    if taken is not None:
                        self._repark(record, taken)
                    continue
                sent += 1
        if failures:
            raise RuntimeError(
                f"{failures} re-driven import(s) could not be enqueued ({sent} were)"
            )
        return sent

    def _repark(self, record: ImportRecord, taken: str) -> None:
        """Best effort: should this fail too, the record is found as stranded a day later."""
        try:
            self.ledger.repark(record, taken)
        except Exception:
            logger.exception("re-drive could not park an import again", extra={"kind": record.kind})

    def _usable(self, connection: str) -> bool:
        try:
            return self.tokens.usable(connection)
        except Exception:  # the state table unreadable: leave its parks to their own time
            logger.exception("connection state unreadable", extra={"connection": connection})
            return False

    def keep_tokens_fresh(self) -> list[dict[str, str]]:
        # Renew only a token that would fall inside the imports' own margin before the next
        # run: then imports never refresh, and a token serves ~55 of its 60 minutes.
        ahead = self.settings.token_refresh_margin_seconds + TOKEN_KEEPER_RATE_MINUTES * 60 + 60
        return [self.tokens.keep_fresh(name, ahead) for name in sorted(self.settings.connections)]


_CATEGORY_NAMES = {
    Category.PERMANENT: "permanent",
    Category.AUTH: "auth",
    Category.RATE_MINUTE: "rate_limited",
    Category.RATE_DAILY: "rate_limited",
    Category.RATE_CONCURRENCY: "rate_limited",
    Category.UNKNOWN: "unknown_outcome",
    Category.NOT_SENT: "zoho_unavailable",
}
