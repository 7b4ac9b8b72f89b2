"""One import attempt, from a parsed request to a ledger record (DESIGN.md "One import").

    ledger lease -> [settle, if an earlier outcome is unknown] -> token -> [look-up first]
    -> rate-limit permit -> Zoho import -> classify -> ledger record (+ permit release, same
    transaction) -> outcome event

The rules it keeps, whatever Zoho does:
- an unknown outcome (the import may have happened) keeps the duty to look the record up in
  Books; only a look-up that answered, or a successful import, clears it; no look-up (and so no
  new import) comes sooner than `lookup_settle_seconds` after the ambiguous call was sent;
- every way out of an attempt leaves an owner: the caller's queue message (SQS), a message
  this attempt queues (a synchronous caller), a park with its time (the re-drive job), or a
  terminal status; only an attempt that sent nothing and owes no look-up may leave no trace
  (a synchronous caller told 429, who retries by itself);
- a synchronous caller that finds the record being imported waits for that attempt and
  answers its result; an answer says only what is known.

Zoho outcomes never raise: they end as a record that says what happened and what comes next.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aws_lambda_powertools.metrics import MetricUnit, single_metric
from botocore.exceptions import BotoCoreError, ClientError

from crm_to_books import lookup
from crm_to_books.entities import Entity, get_entity, kinds_needing
from crm_to_books.errors import ConnectionBroken
from crm_to_books.events import OutcomePublisher
from crm_to_books.intake import Intake
from crm_to_books.ledger import (
    MAX_PARKED_AT_ONCE,
    AlreadySucceeded,
    Busy,
    Claim,
    Completion,
    Ledger,
    epoch,
)
from crm_to_books.limiter import (
    AHEAD_SECONDS,
    Denied,
    Permit,
    RateLimiter,
    Reservation,
    next_utc_midnight,
)
from crm_to_books.models import ImportError_, ImportRecord, ImportRequest, Status
from crm_to_books.observability import logger, metrics, output_lock, tracer
from crm_to_books.ports import Holder
from crm_to_books.settings import Organization, Settings
from crm_to_books.tokens import TokenProvider, TokenUnavailable
from crm_to_books.topology import (
    METRIC_IMPORT_FAILED,
    METRIC_IMPORT_SUCCEEDED,
    METRIC_IMPORTS,
    METRIC_ZOHO_LATENCY,
    METRIC_ZOHO_THROTTLED,
    METRICS_NAMESPACE,
    SERVICE_NAME,
)
from crm_to_books.zoho import AccessToken, Category, ZohoAnswer, ZohoClient

_T = TypeVar("_T")
Result = Literal["imported", "already_imported", "failed", "retry_later", "in_progress"]

# Error categories of records waiting on something other than Zoho's availability.
CONNECTION_BROKEN = "connection_broken"
SCOPE_MISSING = "scope_missing"
LOOKUP_REFUSED = "lookup_refused"
LOOKUP_UNPROVABLE = "lookup_unprovable"
SETTLING = "outcome_unknown"

BROKEN_RECHECK_SECONDS = 300.0
LOOKUP_RECHECK_SECONDS = 3600.0  # a look-up Books refused (400/404) or could not prove
LOOKUP_RECHECK_MAX_SECONDS = 6 * 3600.0
PARK_AFTER_SECONDS = 900.0  # longer waits than SQS's 15-minute delay are parked in the ledger
MAX_BACKOFF_SECONDS = 900.0
SHORT_WAIT_SECONDS = 1.0
DENIALS = {  # the limiter's reasons, as records say them
    "per_minute": "the organization's per-minute Zoho limit is used up",
    "concurrency": "the organization's concurrent Zoho calls are at their cap",
    "daily": "the organization's daily Zoho limit is used up",
    "blocked": "Zoho asked this service to slow down for this organization",
    "contention": "many imports for this organization are starting at once",
}
CONNECT_HINT = (
    "crm-to-books connect --connection {connection} --data-centre DC --client-id CLIENT_ID"
)


@dataclass(slots=True)
class ImportOutcome:
    request: ImportRequest
    # None: not read, not written (a queued import waits its turn), or written with others,
    # not read (`Attempt.park_known`)
    record: ImportRecord | None
    result: Result
    retry_after: float | None = None
    zoho_data: dict[str, Any] | None = None
    error: ImportError_ | None = None
    rate_limited: bool = False
    parked: bool = False  # retry_later held by the ledger (re-drive job), not by a queue message
    recorded: bool = True  # False: the ledger kept nothing of this attempt (a sync 429)
    queued: bool = False  # this attempt queued a message that holds the import now
    # retry_later for a wait of the service's own (the settle time, another attempt's lease),
    # not a failure: like a rate limit, it must not count towards a queue's receives
    deferred: bool = False
    # retry_later: the rate slot held for the retry, which the message that brings it back
    # carries (`Reservation.encode`)
    reservation: Reservation | None = None


class _Stop(Exception):
    """Ends an attempt early with its completion (and the permit to release with it)."""

    def __init__(
        self,
        done: Completion,
        rate_limited: bool = False,
        permit: Permit | None = None,
        deferred: bool = False,
    ) -> None:
        super().__init__(done.detail)
        self.done = done
        self.rate_limited = rate_limited
        self.permit = permit
        self.deferred = deferred


@dataclass(slots=True)
class _Run:
    """One attempt's own state, beside what the ledger holds."""

    claim: Claim
    entity: Entity
    org: Organization
    needs_lookup: bool
    lookup_after: float
    sync: bool = False
    reservation: Reservation | None = None  # held for this attempt's first call, not yet used
    permit: Permit | None = None  # taken before the lease: for the first call
    held: Reservation | None = None  # held for the retry this attempt leaves
    sent_at: float | None = None  # when the import left: from then on it may have happened
    zoho_calls: int = 0  # calls to Zoho's import endpoint

    @property
    def request(self) -> ImportRequest:
        return self.claim.request


class Attempt:
    """Runs import attempts. One per process; each `run` is one attempt."""

    def __init__(
        self,
        settings: Settings,
        *,
        ledger: Ledger,
        limiter: RateLimiter,
        tokens: TokenProvider,
        zoho: ZohoClient,
        events: OutcomePublisher,
        intake: Intake,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.limiter = limiter
        self.tokens = tokens
        self.zoho = zoho
        self.events = events
        self.intake = intake
        self._clock = clock
        self._sleep = sleep

    def run(
        self,
        request: ImportRequest,
        *,
        last_delivery: bool = False,
        sync: bool = False,
        holder: Holder | None = None,
        reservation: Reservation | None = None,
    ) -> ImportOutcome:
        """Import now. `last_delivery`: the queue dead-letters the message if this fails.
        `sync`: a synchronous caller, whom no queue message stands behind (a retry is queued
        for it). `holder`: the message the request came in, asked to hold a retry before the
        record says when it is. `reservation`: the rate slot held for this attempt (carried by
        the message), used for its first call to Zoho. A queued caller (not `sync`) owns a
        `retry_later` that wrote no record (`recorded` False): its holder, or the caller itself,
        brings the import back after `retry_after` with the outcome's `reservation`."""
        s = self.settings
        entity = get_entity(request.kind)
        org = s.organization(request.organization_id)
        early = None if sync else self._before_lease(request, org, reservation)
        if isinstance(early, ImportOutcome):
            if holder is not None:
                # A record that may say a time this message was to keep is told the new one,
                # after the copy is sent; else nothing waits on the copy, sent with others.
                keeps = reservation is None and (holder.keeps_a_time or request.source == "redrive")
                held = holder.hold(
                    early.retry_after or 1.0,
                    fresh=True,
                    reservation=early.reservation,
                    later=not keeps,
                )
                if keeps:
                    self._reschedule(request, early, held, holder)
            return early
        if isinstance(early, Reservation):  # its turn is within a second: taken in process
            reservation, early = early, None
        state = self._begin(request, early)
        if not isinstance(state, Claim):
            return self._not_claimed(request, state, sync, holder)
        run = _Run(
            state,
            entity,
            org,
            state.needs_lookup,
            state.lookup_after,
            sync=sync,
            reservation=reservation,
            permit=early,
        )
        permit: Permit | None = None
        data: dict[str, Any] | None = None
        rate_limited = deferred = False
        try:
            done, permit, data = self._attempt(run)
        except _Stop as stop:
            done, rate_limited, permit = stop.done, stop.rate_limited, stop.permit
            deferred = stop.deferred
        except Exception:
            self._finish_after_fault(run)
            raise
        permit = self._with_unused(run, permit)
        rate_limited = rate_limited or bool(done.error and done.error.category == "rate_limited")
        if (
            sync
            and rate_limited
            and not run.needs_lookup
            and self.ledger.abandon(run.claim, permit)
        ):
            # Nothing was imported and nothing is owed (Zoho refused, or we sent nothing): the
            # caller, told 429, retries by itself.
            previous = run.claim.previous
            wait = max((done.next_attempt_at or self._clock()) - self._clock(), 1.0)
            return ImportOutcome(
                request,
                previous or run.claim.record,
                "retry_later",
                retry_after=wait,
                error=done.error,
                rate_limited=True,
                recorded=False,
            )
        queued = self._leave_an_owner(
            run, done, sync, holder, last_delivery, fresh=rate_limited or deferred
        )
        record = self._complete(run, done, permit)
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
        result: Result = (
            "imported"
            if record.status is Status.SUCCEEDED
            else "failed"
            if record.status is Status.FAILED
            else "retry_later"
        )
        retry_after = None
        if result == "retry_later":
            retry_after = self._come_back_in(done.next_attempt_at, self._held(run))
        return ImportOutcome(
            request,
            record,
            result,
            retry_after=retry_after,
            zoho_data=data,
            error=record.last_error if result != "imported" else None,
            rate_limited=rate_limited,
            parked=done.parked,
            queued=queued,
            deferred=deferred,
            reservation=self._held(run) if result == "retry_later" else None,
        )

    def _begin(
        self, request: ImportRequest, early: Permit | None
    ) -> Claim | AlreadySucceeded | Busy:
        """The ledger's lease; a permit taken before it is released if no claim comes of it."""
        s = self.settings
        try:
            state = self.ledger.begin(
                request, uuid.uuid4().hex, s.attempt_lease_seconds, s.lookup_settle_seconds
            )
        except Exception:
            if early is not None:
                self._drop(early)
            raise
        if not isinstance(state, Claim) and early is not None:
            self.limiter.release(early)  # not used: counts as a call that finished now
        return state

    def _with_unused(self, run: _Run, permit: Permit | None) -> Permit | None:
        """The permit to release with the record: the attempt's, or the one taken before the
        lease if the attempt ended before its first call to Zoho (settling, no token, a scope
        missing, found by a look-up), which would otherwise hold its seat until its lease
        ends. Both (never expected): the early one is released now."""
        early, run.permit = run.permit, None
        if early is None:
            return permit
        if permit is None:
            return early
        self.limiter.release(early)
        return permit

    def _not_claimed(
        self,
        request: ImportRequest,
        state: AlreadySucceeded | Busy,
        sync: bool,
        holder: Holder | None,
    ) -> ImportOutcome:
        """The record was imported already, or another attempt holds its lease."""
        if isinstance(state, AlreadySucceeded):
            return self._known(request, state.record)
        if sync:
            return self._wait_for_other(request, state)
        if holder is not None:
            holder.hold(state.retry_after, fresh=True)
        return ImportOutcome(
            request, state.record, "retry_later", retry_after=state.retry_after, deferred=True
        )

    # --- the attempt -----------------------------------------------------------------------
    def _attempt(self, run: _Run) -> tuple[Completion, Permit | None, dict[str, Any] | None]:
        entity, request = run.entity, run.request
        if run.needs_lookup and self._clock() < run.lookup_after:
            raise _Stop(self._settling(run), deferred=True)
        token = self._token(run)
        self._check_scope(run, entity.read_scope if run.needs_lookup else entity.scope)
        if run.needs_lookup:
            found = self._look_up(run, token)
            if found is not None:
                books_id, token = found
                return (
                    Completion(
                        Status.SUCCEEDED,
                        books_id=books_id,
                        detail="An earlier attempt's outcome was unknown; the record was found in "
                        f"Books as {entity.books_id_key} {books_id}, so it was not imported again.",
                    ),
                    None,
                    {entity.books_id_key: books_id},
                )
            run.needs_lookup = False  # Books answered: absent
            self._check_scope(run, entity.scope)

        def send(t: AccessToken) -> ZohoAnswer:
            run.sent_at = self._clock()  # the latest send: Zoho may commit it from now on
            run.zoho_calls += 1
            return self.zoho.import_record(t, entity, request.organization_id, request.crm_id)

        answer, token, permit = self._call(run, send, token, entity.scope, keep_permit=True)
        if answer.category is Category.SUCCESS:
            imported = entity.books_id(answer.data)
            if imported:
                return (
                    Completion(
                        Status.SUCCEEDED,
                        books_id=imported,
                        detail=f"Imported into Zoho Books as {entity.books_id_key} {imported}.",
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
        if answer.category is Category.PERMANENT:
            if permit is not None:
                self.limiter.release(permit)
            return self._refused_for_good(run, answer, token), None, None
        return self._retry(run, answer), permit, None

    def _look_up(self, run: _Run, token: AccessToken) -> tuple[str, AccessToken] | None:
        """The Books id when Books proves the record is there; None when it proves it is not.
        Anything else stops the attempt with the look-up duty kept."""
        entity, request = run.entity, run.request
        current = [token]

        def call(what: Literal["list", "read"], ident: str) -> ZohoAnswer:
            def once(t: AccessToken) -> ZohoAnswer:
                if what == "list":
                    return self.zoho.list_by_crm_id(t, entity, request.organization_id, ident)
                return self.zoho.read_record(t, entity, request.organization_id, ident)

            answer, current[0], _ = self._call(run, once, current[0], entity.read_scope)
            return answer

        result = lookup.look_up(entity, request.crm_id, call)
        if isinstance(result, lookup.Found):
            if result.duplicates:
                logger.warning(
                    "Books holds more than one record for this CRM id",
                    extra={
                        "kind": entity.kind,
                        "crm_id": request.crm_id,
                        "more": result.duplicates,
                    },
                )
            return result.books_id, current[0]
        if isinstance(result, lookup.Absent):
            return None
        if isinstance(result, lookup.Unprovable):
            raise _Stop(
                self._lookup_parked(
                    run,
                    ImportError_(message=result.reason, category=LOOKUP_UNPROVABLE),
                    f"Books' answer to the look-up proves neither that the record is there nor "
                    f"that it is not ({result.reason})",
                )
            )
        answer = result.answer
        if answer.category is Category.PERMANENT:
            raise _Stop(
                self._lookup_parked(
                    run,
                    self._error(answer, LOOKUP_REFUSED),
                    f"Zoho refused the look-up ({self._said(answer)})",
                )
            )
        raise _Stop(self._retry(run, answer, looking_up=True), rate_limited=_rate(answer))

    def _refused_for_good(self, run: _Run, answer: ZohoAnswer, token: AccessToken) -> Completion:
        """Zoho refused the import (a permanent 4xx). If Books already holds the record (it was
        imported outside this service), the record says so instead of `failed`."""
        entity = run.entity
        said = self._said(answer)
        error = self._error(answer, "permanent")
        try:
            found = self._look_up(run, token)
        except _Stop:
            found = None
            unchecked = " Whether Books already holds it could not be checked now."
        else:
            unchecked = ""
        if found is not None:
            books_id = found[0]
            return Completion(
                Status.SUCCEEDED,
                books_id=books_id,
                zoho_calls=run.zoho_calls,
                detail=f"Zoho refused the import ({said}), and Books already holds the record as "
                f"{entity.books_id_key} {books_id} (imported outside this service).",
            )
        return Completion(
            Status.FAILED,
            error=error,
            zoho_calls=run.zoho_calls,
            detail=f"Failed: Zoho said: {said}. Not retried; fix the cause and import again."
            + unchecked,
        )

    # --- calls to Zoho --------------------------------------------------------------------
    def _call(
        self,
        run: _Run,
        call: Callable[[AccessToken], ZohoAnswer],
        token: AccessToken,
        scope: str,
        keep_permit: bool = False,
    ) -> tuple[ZohoAnswer, AccessToken, Permit | None]:
        """One Zoho call under a permit. A 401 on an old token: drop it, one new token, one more
        call. A 401 on a fresh token: `scope` is missing (marked for every container)."""
        connection = run.org.connection
        permit = self._permit(run)
        answer = self._timed(call, token)
        if answer.category is Category.AUTH:
            self.limiter.release(permit)
            newer = self._guarded(run, lambda: self.tokens.after_401(connection, token))
            if newer is None:
                raise _Stop(self._scope_missing(run, scope, answer, token))
            token = newer
            permit = self._permit(run)
            answer = self._timed(call, token)
            if answer.category is Category.AUTH:
                raise _Stop(self._scope_missing(run, scope, answer, token), permit=permit)
        if answer.category.rate_limited:
            self._observe_throttle(run.request.organization_id, answer)
        elif answer.category is Category.SUCCESS:
            self.tokens.scope_works(connection, scope)
        if not keep_permit:
            self.limiter.release(permit)
            return answer, token, None
        return answer, token, permit

    def _permit(self, run: _Run) -> Permit:
        organization_id = run.request.organization_id
        got: Permit | Reservation | Denied
        if run.permit is not None:  # taken before the lease
            got, run.permit = run.permit, None
        else:
            got = self._ask(run)
        if isinstance(got, Reservation) and got.start_at - self._clock() <= AHEAD_SECONDS:
            run.reservation = got  # its turn is within a second: waited for here
            got = self._ask(run)
        got = self._once_more(got, lambda: self._ask(run))
        if isinstance(got, Permit):
            run.reservation = None  # used, or lapsed
            if got.start_at > self._clock():  # its slot frees within a second: wait for it
                self._sleep(got.start_at - self._clock())
            return got
        if isinstance(got, Reservation):
            run.held = got
            raise _Stop(self._waits_turn(run, got), rate_limited=True)
        logger.debug("no permit", extra={"organization_id": organization_id, "why": got.reason})
        raise _Stop(self._denied(run, got), rate_limited=True)

    def _once_more(
        self, got: Permit | Reservation | Denied, ask: Callable[[], Permit | Reservation | Denied]
    ) -> Permit | Reservation | Denied:
        """A seat frees within a second: one short wait here beats a trip through the queue,
        whose delays come in whole seconds (and Retry-After too), then `ask` again. Once, no
        spin."""
        if isinstance(got, Denied) and got.retry_after <= SHORT_WAIT_SECONDS and got.brief:
            self._sleep(got.retry_after)
            return ask()
        return got

    def _ask(self, run: _Run) -> Permit | Reservation | Denied:
        """The limiter, asked for a permit; a queue message's attempt may be given a held slot
        (a reservation) instead of a denial, and uses the one it carries first, at its turn
        (waited for here before its seat is taken, so a seat is held only for the call)."""
        held = run.reservation
        if held is not None and 0 < held.start_at - self._clock() <= AHEAD_SECONDS:
            self._sleep(held.start_at - self._clock())
        return self.limiter.acquire(
            run.request.organization_id,
            run.org,
            reserve=not run.sync,
            reservation=run.reservation,
        )

    @tracer.capture_method(capture_response=False)
    def _timed(self, call: Callable[[AccessToken], ZohoAnswer], token: AccessToken) -> ZohoAnswer:
        answer = call(token)
        metrics.add_metric(
            name=METRIC_ZOHO_LATENCY, unit="Milliseconds", value=round(answer.elapsed * 1000, 1)
        )
        tracer.put_annotation("zoho_category", answer.category.value)
        return answer

    def _token(self, run: _Run) -> AccessToken:
        return self._guarded(run, lambda: self.tokens.get(run.org.connection))

    def _guarded(self, run: _Run, get: Callable[[], _T]) -> _T:
        """A token from `get`, or the attempt stops: parked on a broken connection, or waiting
        for Zoho's token endpoint."""
        now = self._clock()
        try:
            return get()
        except ConnectionBroken as exc:
            raise _Stop(
                Completion(
                    Status.RETRYING,
                    parked=True,
                    next_attempt_at=now + BROKEN_RECHECK_SECONDS,
                    error=ImportError_(message=exc.message, category=CONNECTION_BROKEN),
                    detail=f"Parked: {exc.message} It resumes by itself once the connection "
                    f"works.{self._owed(run)}",
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
                    detail=f"Waiting for a Zoho access token ({exc.message}); next attempt in "
                    f"{math.ceil(wait)} s.{self._owed(run)}",
                )
            ) from None

    def _check_scope(self, run: _Run, scope: str) -> None:
        until = self.tokens.missing_scope(run.org.connection, scope)
        if until is not None:
            raise _Stop(self._scope_parked(run, scope, until, "marked missing by an earlier call"))

    def _observe_throttle(self, organization_id: str, answer: ZohoAnswer) -> None:
        metrics.add_metric(name=METRIC_ZOHO_THROTTLED, unit="Count", value=1)
        now = self._clock()
        if answer.category is Category.RATE_DAILY:
            self.limiter.block(organization_id, next_utc_midnight(now), "daily")
        elif answer.category is Category.RATE_MINUTE:
            window = self.settings.rate_window_seconds
            wait = float(answer.rate.reset or window)
            self.limiter.block(organization_id, now + min(wait, window), "blocked")
        logger.warning(
            "Zoho throttled this organization",
            extra={"organization_id": organization_id, "zoho_code": answer.zoho_code},
        )

    # --- how an attempt ends --------------------------------------------------------------
    def _retry(self, run: _Run, answer: ZohoAnswer, looking_up: bool = False) -> Completion:
        """A retryable answer: Zoho throttled, failed, or may have done it (unknown outcome)."""
        now = self._clock()
        said = self._said(answer)
        error = self._error(answer, _CATEGORY_NAMES.get(answer.category, answer.category.value))
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
                detail=f"Throttled by Zoho. {said}. {self._not_done(run)}Next attempt in "
                f"{math.ceil(until - now)} s.",
            )
        wait = self._backoff(run)
        if answer.category is Category.UNKNOWN and not looking_up and run.sent_at is not None:
            run.needs_lookup = True
            run.lookup_after = max(
                run.lookup_after, run.sent_at + self.settings.lookup_settle_seconds
            )
        at = max(now + wait, run.lookup_after if run.needs_lookup else 0.0)
        if looking_up:
            what = "The look-up did not answer; nothing is sent again until one does."
        elif answer.category is Category.UNKNOWN:
            what = (
                "The outcome is unknown (Zoho may have imported it): the record will be looked "
                "up in Books, no sooner than "
                f"{math.ceil(self.settings.lookup_settle_seconds)} s after the import was sent, "
                "and imported again only if absent."
            )
        else:
            what = "The request did not reach Zoho."
        return Completion(
            Status.RETRYING,
            error=error,
            next_attempt_at=at,
            parked=at - now > PARK_AFTER_SECONDS,
            retries=run.claim.retries + 1,
            detail=f"{said}. {what} Next attempt in {math.ceil(at - now)} s.",
        )

    def _settling(self, run: _Run) -> Completion:
        now = self._clock()
        at = run.lookup_after
        return Completion(
            Status.RETRYING,
            next_attempt_at=at,
            parked=at - now > PARK_AFTER_SECONDS,
            retries=run.claim.retries,
            error=run.claim.record.last_error
            or ImportError_(message="an earlier attempt's outcome is unknown", category=SETTLING),
            detail="An earlier attempt's outcome is unknown (Zoho may have imported it and may "
            "still be committing it). The record will be looked up in Books in "
            f"{math.ceil(at - now)} s and imported only if absent.",
        )

    def _lookup_parked(self, run: _Run, error: ImportError_, why: str) -> Completion:
        now = self._clock()
        wait = min(
            LOOKUP_RECHECK_SECONDS * 2 ** min(run.claim.retries, 4), LOOKUP_RECHECK_MAX_SECONDS
        )
        return Completion(
            Status.RETRYING,
            error=error,
            parked=True,
            next_attempt_at=now + wait,
            retries=run.claim.retries + 1,
            detail=f"Parked: an earlier attempt's outcome is unknown, and {why}. Nothing is sent "
            f"to Zoho again until a look-up answers; next look-up in {math.ceil(wait)} s. To "
            f"settle it by hand, search Books for {run.entity.crm_id_field}="
            f"{run.request.crm_id}.",
        )

    def _scope_missing(
        self, run: _Run, scope: str, answer: ZohoAnswer, token: AccessToken
    ) -> Completion:
        until = self.tokens.mark_missing(run.org.connection, scope)
        return self._scope_parked(run, scope, until, f"Zoho said: {self._said(answer)}")

    def _scope_parked(self, run: _Run, scope: str, until: float, evidence: str) -> Completion:
        connection = run.org.connection
        kinds = ", ".join(kinds_needing(scope))
        need = "look-up" if scope == run.entity.read_scope else "import"
        return Completion(
            Status.RETRYING,
            parked=True,
            next_attempt_at=until,
            retries=run.claim.retries,
            error=ImportError_(
                message=f"the connection's refresh token lacks the scope {scope}",
                category=SCOPE_MISSING,
                http_status=401,
            ),
            detail=f"Parked: Zoho refused a newly issued access token for the {need} "
            f"({evidence}). The connection {connection!r} most likely lacks the scope {scope} "
            f"(or access to organization {run.request.organization_id}); imports of {kinds} "
            "wait, other kinds go on. Fix: `"
            + CONNECT_HINT.format(connection=connection)
            + f"` with a grant code that includes {scope}; parked imports resume at once."
            + self._owed(run),
        )

    def _denied(self, run: _Run, denied: Denied) -> Completion:
        return self._denial(denied, self._not_done(run), run.claim.retries)

    @staticmethod
    def _denial(denied: Denied, owed: str, retries: int) -> Completion:
        """The limiter said no: a retry when it says, parked if that is far off."""
        why = DENIALS.get(denied.reason, denied.reason)
        return Completion(
            Status.RETRYING,
            parked=denied.parks or denied.retry_after > PARK_AFTER_SECONDS,
            next_attempt_at=denied.until,
            retries=retries,
            error=ImportError_(message=why, category="rate_limited"),
            detail=f"Not sent to Zoho now: {why}. {owed}Next attempt in "
            f"{math.ceil(denied.retry_after)} s.",
        )

    def _waits_turn(self, run: _Run, held: Reservation) -> Completion:
        wait = held.start_at - self._clock()
        return Completion(
            Status.RETRYING,
            next_attempt_at=held.start_at,
            retries=run.claim.retries,
            error=ImportError_(message=DENIALS["per_minute"], category="rate_limited"),
            detail=f"Not sent to Zoho now: {DENIALS['per_minute']}. "
            f"{self._not_done(run)}A rate slot is held for it: next attempt in "
            f"{math.ceil(wait)} s.",
        )

    def _before_lease(
        self, request: ImportRequest, org: Organization, reservation: Reservation | None
    ) -> Permit | Reservation | ImportOutcome | None:
        """A queued import, when its organization is at or near its per-minute limit or has
        every seat taken, as this container saw it (a container that never saw it looks first),
        or it came back before its held slot's turn: the limiter is asked before the ledger (a
        seat that frees within a second is waited for, once), after a turn this container's own
        release kept for the next queued import (`RateLimiter.claim`, no call). A held slot or
        a short wait ends the attempt here: the message holds it (with the slot), and the
        ledger is neither read nor written (the record stays as it was: queued, or none yet;
        a retrying one is told the new time by `run`, `_reschedule`). A permit goes on to the
        lease; a park goes through the ledger as any attempt's does."""
        got: Permit | Reservation | Denied
        if reservation is not None:
            if reservation.start_at - self._clock() <= AHEAD_SECONDS:
                return None  # its turn: the attempt takes the held slot
            got = reservation  # back before its turn: wait for it, nothing asked
        elif not self.limiter.crowded(request.organization_id, org):
            return None
        elif (kept := self.limiter.claim(request.organization_id, org)) is not None:
            got = kept
        else:
            got = self._once_more(
                self.limiter.acquire(request.organization_id, org, reserve=True),
                lambda: self.limiter.acquire(request.organization_id, org, reserve=True),
            )
        if isinstance(got, Permit):
            return got
        if isinstance(got, Reservation) and got.start_at - self._clock() <= AHEAD_SECONDS:
            return got
        if isinstance(got, Denied) and (got.parks or got.retry_after > PARK_AFTER_SECONDS):
            return None
        held = got if isinstance(got, Reservation) else None
        wait = self._come_back_in(got.start_at if isinstance(got, Reservation) else got.until, held)
        reason = "per_minute" if isinstance(got, Reservation) else got.reason
        return ImportOutcome(
            request,
            None,
            "retry_later",
            retry_after=wait,
            error=ImportError_(message=DENIALS.get(reason, reason), category="rate_limited"),
            rate_limited=True,
            recorded=False,
            reservation=held,
        )

    def _reschedule(
        self, request: ImportRequest, early: ImportOutcome, held: bool, holder: Holder
    ) -> None:
        """A message that may keep a time its record says (a retry's, a re-drive's), sent
        again for its turn before the lease: the record says the new time, if it said an
        earlier one (one conditional write, only for such messages). A failure is logged, not
        raised: the message holds the import either way, and failing it would bring back a
        second copy."""
        wait = (early.retry_after or 1.0) if held else holder.fallback_seconds
        reason = early.error.message if early.error else DENIALS["per_minute"]
        try:
            self.ledger.reschedule(
                request,
                self._clock() + wait,
                f"Not sent to Zoho now: {reason}. It waits for its turn: next attempt in "
                f"{math.ceil(wait)} s.",
            )
        except Exception:
            logger.warning("could not write a retry's new time", exc_info=True)

    def park_known(self, requests: Sequence[ImportRequest]) -> list[ImportOutcome]:
        """Queued imports of one organization that nobody may send before a park's end, as this
        container last saw its limiter item (`RateLimiter.stopped`: Zoho said stop until
        midnight, or the day's calls are spent; no read): parked in the ledger together, one
        transaction (`Ledger.park`), instead of a lease and a park each. A backlog parked at its
        daily cap then costs a fraction of a call per message, and does not hold up another
        organization's imports behind it in the queue. Each record once (a twin takes its own
        attempt). None parked when the view shows no such stop, or when the transaction does not
        write (a throttle that lasts): each import then takes its own attempt, as before; so
        does a record the ledger will not park with others (imported already, in progress,
        owing a look-up, parked on a broken connection or a missing scope, whose own attempt
        says what fixes it: `Ledger.park`). The parked imports' outcomes."""
        if not requests:
            return []
        organization_id = requests[0].organization_id
        if any(r.organization_id != organization_id for r in requests):
            raise ValueError("park_known takes one organization's imports")
        org = self.settings.organization(organization_id)
        denied = self.limiter.stopped(organization_id, org)
        if denied is None or not (denied.parks or denied.retry_after > PARK_AFTER_SECONDS):
            return []
        distinct: dict[tuple[str, str, str], ImportRequest] = {}
        for request in requests:
            distinct.setdefault(request.key, request)
        done = self._denial(denied, owed="", retries=0)  # `park` keeps the record's retries
        chosen = list(distinct.values())[:MAX_PARKED_AT_ONCE]
        try:
            chosen = self.ledger.park(chosen, done, unless=(CONNECTION_BROKEN, SCOPE_MISSING))
        except (ClientError, BotoCoreError):
            logger.warning(
                "could not park imports together; each takes its own attempt",
                extra={"organization_id": organization_id, "imports": len(chosen)},
                exc_info=True,
            )
            return []
        outcomes = []
        for request in chosen:
            self._count_as(request.kind, Status.RETRYING)
            outcomes.append(
                ImportOutcome(
                    request,
                    None,
                    "retry_later",
                    retry_after=max(denied.retry_after, 1.0),
                    error=done.error,
                    rate_limited=True,
                    parked=True,
                )
            )
        return outcomes

    def _come_back_in(self, when: float | None, held: Reservation | None) -> float:
        """Seconds until the retry: for a held slot, whole seconds that land at most a second
        before its turn (queue delays are whole seconds; the attempt waits for the turn)."""
        wait = (when or self._clock()) - self._clock()
        if held is not None:
            return float(max(1, math.floor(wait)))
        return max(wait, 1.0)

    @staticmethod
    def _held(run: _Run) -> Reservation | None:
        return run.held or run.reservation

    def _not_done(self, run: _Run) -> str:
        """What is known of Books for a record this attempt did not import."""
        return self._owed(run).strip() + " " if run.needs_lookup else ""

    @staticmethod
    def _owed(run: _Run) -> str:
        if not run.needs_lookup:
            return ""
        return (
            " An earlier attempt's outcome is unknown: the record is looked up in Books before "
            "anything is sent again."
        )

    def _backoff(self, run: _Run) -> float:
        tries = run.claim.retries
        return float(min(MAX_BACKOFF_SECONDS, 5 * 2 ** min(tries, 8)) * random.uniform(0.8, 1.2))

    @staticmethod
    def _said(answer: ZohoAnswer) -> str:
        code = (
            f" (code {answer.zoho_code}, HTTP {answer.http_status})" if answer.http_status else ""
        )
        return f"{answer.message}{code}"

    @staticmethod
    def _error(answer: ZohoAnswer, category: str) -> ImportError_:
        return ImportError_(
            http_status=answer.http_status,
            zoho_code=answer.zoho_code,
            message=answer.message,
            category=category,
        )

    def _queue_or_park(self, run: _Run, done: Completion) -> bool:
        """A synchronous caller's import that must wait: a message holds it from now on, or,
        if none can be sent, a park (the re-drive job). True when a message was sent."""
        wait = max((done.next_attempt_at or self._clock()) - self._clock(), 0.0)
        try:
            self.intake.enqueue(run.request.model_copy(update={"source": "http"}), wait)
        except Exception:
            logger.exception("could not queue a retry; parking it", extra={"kind": run.entity.kind})
            done.parked = True
            return False
        return True

    def _leave_an_owner(
        self,
        run: _Run,
        done: Completion,
        sync: bool,
        holder: Holder | None,
        last_delivery: bool,
        fresh: bool,
    ) -> bool:
        """Before the record says when the import comes back, make sure something brings it
        back then: a park (the re-drive job), a message this attempt queues for a synchronous
        caller, or the message it came in. True when a message was queued."""
        if done.status is not Status.RETRYING or done.parked:
            return False
        if sync:
            return self._queue_or_park(run, done)
        if holder is not None:
            self._hold(holder, done, fresh, self._held(run))
        if last_delivery and not fresh:
            done.in_dlq = True
            done.detail = (done.detail or "") + (
                " This was the queue's last delivery: the message goes to the dead-letter "
                "queue (`crm-to-books redrive` sends it back)."
            )
        return False

    def _hold(
        self, holder: Holder, done: Completion, fresh: bool, held: Reservation | None
    ) -> None:
        """The message holds the retry (and the rate slot held for it); if it cannot be told
        when, it comes back when its visibility ends, and the record says that time instead."""
        now = self._clock()
        wait = max((done.next_attempt_at or now) - now, 0.0)
        if held is not None:
            wait = self._come_back_in(done.next_attempt_at, held)
        if not holder.hold(wait, fresh, reservation=held, keeps_a_time=True):
            done.next_attempt_at = now + max(wait, holder.fallback_seconds)
            done.detail = (done.detail or "") + (
                f" (The queue brings it back in {math.ceil(holder.fallback_seconds)} s.)"
            )

    def _complete(self, run: _Run, done: Completion, permit: Permit | None) -> ImportRecord:
        if done.status is Status.RETRYING:
            done.retries = done.retries or run.claim.retries
            if run.needs_lookup:  # whatever ended the attempt, the look-up duty stays
                done.needs_lookup = True
                done.lookup_after = run.lookup_after
        done.zoho_calls = run.zoho_calls
        return self.ledger.complete(run.claim, done, permit)

    def _finish_after_fault(self, run: _Run) -> None:
        """Unexpected (DynamoDB or SQS failing past their retries, a bug): leave a record that
        says what is known, parked, so the re-drive job owns it whoever called (a synchronous
        caller's answer is an error, and no message may stand behind it). If the import left,
        it may have happened: the look-up duty comes with it."""
        if run.sent_at is not None:
            run.needs_lookup = True
            run.lookup_after = max(
                run.lookup_after, run.sent_at + self.settings.lookup_settle_seconds
            )
        at = max(self._clock() + 60, run.lookup_after if run.needs_lookup else 0.0)
        try:
            self._complete(
                run,
                Completion(
                    Status.RETRYING,
                    next_attempt_at=at,
                    parked=True,
                    retries=run.claim.retries + 1,
                    detail="The attempt failed unexpectedly; it is tried again after "
                    f"{math.ceil(at - self._clock())} s." + self._owed(run),
                ),
                run.permit,  # one taken before the lease and not used yet: released with it
            )
        except Exception:  # the lease runs out; the next attempt inherits the look-up duty
            logger.exception("could not record an attempt that failed unexpectedly")
        run.permit = None

    def _drop(self, permit: Permit) -> None:
        """Release a permit nothing used, after a fault: if that fails too, its lease ends it."""
        try:
            self.limiter.release(permit)
        except Exception:
            logger.exception("could not release an unused permit; its lease will end it")

    def _known(self, request: ImportRequest, record: ImportRecord) -> ImportOutcome:
        books_id = record.books_id
        key = get_entity(request.kind).books_id_key
        return ImportOutcome(
            request, record, "already_imported", zoho_data={key: books_id} if books_id else {}
        )

    def _wait_for_other(self, request: ImportRequest, busy: Busy) -> ImportOutcome:
        """A synchronous caller found the record being imported: wait (bounded) for that attempt
        and answer its result; only if it does not end in time, say it is in progress."""
        deadline = self._clock() + self.settings.sync_wait_seconds
        poll = 0.2
        record = busy.record
        while self._clock() < deadline:
            self._sleep(min(poll, max(deadline - self._clock(), 0.01)))
            poll = min(poll * 1.5, 1.0)
            current = self.ledger.get(request.organization_id, request.kind, request.crm_id)
            if current is None:  # the other attempt was rate-limited and left no trace
                return ImportOutcome(
                    request,
                    record,
                    "retry_later",
                    retry_after=1.0,
                    rate_limited=True,
                    recorded=False,
                )
            record = current
            if record.status is Status.SUCCEEDED:
                return self._known(request, record)
            if record.status is Status.FAILED:
                return ImportOutcome(request, record, "failed", error=record.last_error)
            if record.status is not Status.IN_PROGRESS:
                return ImportOutcome(
                    request,
                    record,
                    "retry_later",
                    retry_after=self._until(record.next_attempt_at),
                    error=record.last_error,
                    parked=record.parked,
                )
        return ImportOutcome(request, record, "in_progress", retry_after=5.0)

    def _until(self, when: str | None) -> float:
        return max(epoch(when) - self._clock(), 1.0) if when else 5.0

    def _count(self, record: ImportRecord) -> None:
        self._count_as(record.kind, record.status)

    def _count_as(self, kind: str, status: Status) -> None:
        if status is Status.SUCCEEDED:
            metrics.add_metric(name=METRIC_IMPORT_SUCCEEDED, unit="Count", value=1)
        elif status is Status.FAILED:
            metrics.add_metric(name=METRIC_IMPORT_FAILED, unit="Count", value=1)
        # The same outcome by kind: its own EMF line, so the alarms' metrics keep one dimension.
        # Printed under the log handler's lock: a batch's lanes print at once, and `print`
        # writes the line and its newline apart (another lane's line could land between).
        with (
            output_lock(),
            single_metric(
                name=METRIC_IMPORTS,
                unit=MetricUnit.Count,
                value=1,
                namespace=METRICS_NAMESPACE,
                default_dimensions={"service": SERVICE_NAME},
            ) as metric,
        ):
            metric.add_dimension(name="kind", value=kind)
            metric.add_dimension(name="outcome", value=status.value)


def _rate(answer: ZohoAnswer) -> bool:
    return answer.category.rate_limited


_CATEGORY_NAMES = {
    Category.PERMANENT: "permanent",
    Category.AUTH: "auth",
    Category.RATE_MINUTE: "rate_limited",
    Category.RATE_DAILY: "rate_limited",
    Category.RATE_CONCURRENCY: "rate_limited",
    Category.UNKNOWN: "unknown_outcome",
    Category.NOT_SENT: "zoho_unavailable",
}
