"""The service's event bus and the rules routing `Import Requested` events to the kind queues."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from crm_to_books import topology
from crm_to_books.topology import Names


class Events(Construct):
    def __init__(self, scope: Construct, id: str, *, names: Names) -> None:
        super().__init__(scope, id)
        self.bus = events.EventBus(
            self,
            "Bus",
            event_bus_name=names.event_bus,
            description="Import requests in; Import Succeeded / Import Failed out",
        )

    def route_imports(self, kind: str, queue: sqs.IQueue, dlq: sqs.IQueue) -> events.Rule:
        """Send `Import Requested` events whose detail.kind is `kind` to the kind's queue."""
        rule = events.Rule(
            self,
            f"{kind}ImportRequested",
            event_bus=self.bus,
            description=f"{topology.DETAIL_IMPORT_REQUESTED} events for {kind} records",
            event_pattern=_pattern(topology.import_requested_pattern(kind)),
        )
        # An undeliverable event lands in the kind's DLQ (alarmed); it is a valid queue body,
        # so `crm-to-books redrive` replays it like any other.
        rule.add_target(targets.SqsQueue(queue, dead_letter_queue=dlq))
        return rule


def _pattern(pattern: Mapping[str, Any]) -> events.EventPattern:
    """topology's pattern (EventBridge's JSON keys) as the L2 type."""
    return events.EventPattern(detail_type=pattern["detail-type"], detail=pattern["detail"])
