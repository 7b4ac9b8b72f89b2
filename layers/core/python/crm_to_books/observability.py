"""The process's Powertools Logger, Metrics and tracer: one set, shared by handlers and engine.

The tracer is Powertools' `Tracer`, built on the first invocation X-Ray samples, not at
import: importing the X-Ray SDK builds its recorder (and a botocore client for centralized
sampling Lambda never uses), about 0.7x `import boto3` on every cold start, and patching every
library it knows costs more. An invocation X-Ray did not sample records no subsegment anyway, so
it never loads the SDK; a sampled one patches only what the engine calls (`TRACED_LIBRARIES`).
Lambda says whether it sampled an invocation in `_X_AMZN_TRACE_ID` (`Sampled=1`); with active
tracing it samples by X-Ray's default rule (the first request each second, then 5%), or follows
the caller's decision (an API Gateway stage's sampling rule, an SQS message's trace header).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from aws_lambda_powertools import Logger, Metrics

from crm_to_books.topology import METRICS_NAMESPACE, SERVICE_NAME

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

_F = TypeVar("_F", bound=Callable[..., Any])
TRACE_ENV = "_X_AMZN_TRACE_ID"  # set by Lambda for each invocation
TRACED_LIBRARIES = ("botocore", "requests")  # AWS and Zoho calls become subsegments


def sampled() -> bool:
    """Whether X-Ray records the current invocation."""
    return "Sampled=1" in os.environ.get(TRACE_ENV, "")


class SampledTracer:
    """Powertools' Tracer API (the part this service uses), for sampled invocations only."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._tracer: Tracer | None = None

    def _active(self) -> Tracer | None:
        if not sampled():
            return None
        if self._tracer is None:
            from aws_lambda_powertools import Tracer

            self._tracer = Tracer(service=self._service, auto_patch=False)
            self._tracer.patch(TRACED_LIBRARIES)
        return self._tracer

    def capture_lambda_handler(self, handler: _F) -> _F:
        @functools.wraps(handler)
        def traced(event: Any, context: Any, **kwargs: Any) -> Any:
            tracer = self._active()
            if tracer is None:
                return handler(event, context, **kwargs)
            return tracer.capture_lambda_handler(handler)(event, context, **kwargs)

        return traced  # type: ignore[return-value]

    def capture_method(self, capture_response: bool = True) -> Callable[[_F], _F]:
        def decorate(method: _F) -> _F:
            @functools.wraps(method)
            def traced(*args: Any, **kwargs: Any) -> Any:
                tracer = self._active()
                if tracer is None:
                    return method(*args, **kwargs)
                captured = tracer.capture_method(capture_response=capture_response)(method)
                return captured(*args, **kwargs)

            return traced  # type: ignore[return-value]

        return decorate

    def in_threads[T, R](self, work: Callable[[T], R]) -> Callable[[T], R]:
        """`work`, to run in worker threads, recording its subsegments under the calling
        thread's segment: X-Ray keeps the current segment per thread, and a worker has none."""
        if self._active() is None:
            return work
        from aws_xray_sdk.core import xray_recorder

        entity = xray_recorder.get_trace_entity()

        def traced(arg: T) -> R:
            xray_recorder.set_trace_entity(entity)
            try:
                return work(arg)
            finally:
                xray_recorder.clear_trace_entities()

        return traced

    def put_annotation(self, key: str, value: str | bool) -> None:
        tracer = self._active()
        if tracer is not None:
            tracer.put_annotation(key=key, value=value)


class _Metrics(Metrics):
    """Powertools' `Metrics`, one `add_metric` at a time: a batch's lanes add at once, and its
    get-append-store of a metric's values could lose one."""

    _adding = threading.Lock()

    def add_metric(self, *args: Any, **kwargs: Any) -> None:
        with self._adding:
            super().add_metric(*args, **kwargs)


logger = Logger(service=SERVICE_NAME)
metrics = _Metrics(namespace=METRICS_NAMESPACE, service=SERVICE_NAME)


def output_lock() -> AbstractContextManager[Any]:
    """The log handler's lock, for output that is not a log line (an EMF line `print`ed): held,
    no lane's line lands in the middle of it."""
    lock = logger.registered_handler.lock
    return lock if lock is not None else contextlib.nullcontext()


tracer = SampledTracer(SERVICE_NAME)
