"""A CRM sweep's checkpoint: how far through a module's changes the sweep has got. Pure logic,
no I/O, so every rule below is tested on its own (`tests/unit/test_sweep_checkpoint.py`).

Zoho CRM lists records by `Modified_Time` (one-second resolution: ties are the norm) and
answers `If-Modified-Since: T` with the records modified strictly after T. So a checkpoint is

- `bound`: every record last modified before this second has been handled (its import queued
  or done, or the filter excluded it);
- `recent`: the records handled that were modified at or after `bound`, each with the second
  it was modified in.

A run asks for everything modified since `bound - 1` (the boundary second is read again) and
skips the records `recent` holds at the same second: a tie cut by a page edge, a run stopped
mid-second, or a record changed again in the boundary second are neither lost nor queued twice.
A record changed again later has a later `Modified_Time`, so it is handled again.

`advance` moves the checkpoint over a prefix of a walk in ascending `Modified_Time` order:
the bound goes to the second of the last record handled, never past `settled_before` (changes
of the last few seconds may still become visible with an earlier `Modified_Time`; their records
stay in `recent` meanwhile), and never back. A record that changes while a run walks the list
gets a `Modified_Time` of now, at or after any record already listed, so it is either still
ahead in this walk or found by the next one. A walk that reached the last change `close`s the
checkpoint up to its own start (less the settle time): the next run starts after it.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

# A DynamoDB item holds 400 KB; the checkpoint must leave room for the rest of its item.
MAX_ENCODED_BYTES = 300_000


class CheckpointTooLarge(Exception):
    """More records share the boundary seconds than a checkpoint can remember."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    bound: int = 0  # epoch second; 0: nothing handled yet (every record is ahead)
    recent: Mapping[str, int] = field(default_factory=dict)  # crm id -> modified second

    @classmethod
    def starting(cls, start: datetime | None) -> Checkpoint:
        """A first run's checkpoint: records modified from `start` on (None: all of them)."""
        return cls(int(start.timestamp())) if start else cls()

    def modified_since(self) -> str | None:
        """The `If-Modified-Since` header that reads from `bound` on (None: everything)."""
        if self.bound <= 0:
            return None
        return datetime.fromtimestamp(self.bound - 1, UTC).isoformat(timespec="seconds")

    def handled(self, crm_id: str, modified: int) -> bool:
        """This version of the record was handled already (a record before `bound` is never
        listed by a read from the checkpoint: if one comes, it changed again, so it is new)."""
        return self.recent.get(crm_id) == modified

    def advance(self, handled: Iterable[tuple[str, int]], settled_before: int) -> Checkpoint:
        """The checkpoint after `handled`: (crm id, modified second) of each record handled, a
        prefix of the walk in its order."""
        recent = dict(self.recent)
        last: int | None = None
        highest: int | None = None
        out_of_order: int | None = None
        for crm_id, modified in handled:
            recent[crm_id] = modified
            if highest is not None and modified < highest:
                out_of_order = modified if out_of_order is None else min(out_of_order, modified)
            highest = modified if highest is None else max(highest, modified)
            last = modified
        if last is None:
            return self
        # Listed in ascending order, nothing comes out of order; should the CRM ever list a
        # record after a later one, the bound stops at that record's second, not past it.
        candidate = min(last, settled_before)
        if out_of_order is not None:
            candidate = min(candidate, out_of_order)
        bound = max(self.bound, candidate)
        return Checkpoint(bound, {i: s for i, s in recent.items() if s >= bound})

    def close(self, listed_before: int) -> Checkpoint:
        """A walk listed every change up to its end: every record modified before
        `listed_before` (the walk's start, less the settle time: a record changed during the walk
        may have been stamped in a second the walk had passed) is handled, so the bound moves
        there, and the next run reads nothing of what this one saw."""
        if listed_before <= self.bound:
            return self
        return Checkpoint(
            listed_before, {i: s for i, s in self.recent.items() if s >= listed_before}
        )

    @property
    def bound_iso(self) -> str | None:
        if self.bound <= 0:
            return None
        return datetime.fromtimestamp(self.bound, UTC).isoformat(timespec="seconds")

    # --- storage ------------------------------------------------------------------------------
    def encode(self) -> bytes:
        """Compact: ids grouped by second, sorted (CRM ids of one bulk change compress well)."""
        by_second: dict[int, list[str]] = {}
        for crm_id, second in self.recent.items():
            by_second.setdefault(second, []).append(crm_id)
        body = {
            "bound": self.bound,
            "recent": {str(s): ",".join(sorted(ids)) for s, ids in sorted(by_second.items())},
        }
        raw = zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 9)
        if len(raw) > MAX_ENCODED_BYTES:
            raise CheckpointTooLarge(
                f"{len(self.recent)} records share the last {len(by_second)} modified seconds: "
                "more than a checkpoint can remember"
            )
        return raw

    @classmethod
    def decode(cls, raw: bytes) -> Checkpoint:
        body = json.loads(zlib.decompress(raw))
        recent = {
            crm_id: int(second)
            for second, ids in body.get("recent", {}).items()
            for crm_id in ids.split(",")
            if crm_id
        }
        return cls(int(body.get("bound", 0)), recent)


def modified_second(value: object) -> int | None:
    """A record's `Modified_Time` (ISO 8601 with an offset) as an epoch second, or None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return int(parsed.timestamp())
