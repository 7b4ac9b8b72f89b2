"""What every benchmark returns, and how the runner prints and stores it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# Zoho Books' answer time to an import, assumed (Zoho publishes none): the rate-limit benchmark
# compresses it with the window, the cost model bills Lambda for waiting on it.
ZOHO_LATENCY_SECONDS = 0.6
AWS_ROUND_TRIP_SECONDS = 0.008  # assumed: one DynamoDB or EventBridge call, in region


@dataclass(frozen=True, slots=True)
class Options:
    quick: bool = False
    # Reports of the benchmarks already run in this invocation (the cost model reuses them).
    earlier: dict[str, Report] = field(default_factory=dict)


@dataclass(slots=True)
class Figure:
    name: str
    value: float | int | str
    unit: str = ""
    target: str = ""  # as a reader would say it, e.g. "<= 4"
    ok: bool | None = None  # None: a figure without a target

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else "PASS" if self.ok else "MISS"


@dataclass(slots=True)
class Report:
    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    seconds: float = 0.0

    def add(self, *args: Any, **kwargs: Any) -> Figure:
        figure = Figure(*args, **kwargs)
        self.figures.append(figure)
        return figure

    def figure(self, name: str) -> Figure | None:
        return next((f for f in self.figures if f.name == name), None)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for figure, out in zip(self.figures, data["figures"], strict=True):
            out["verdict"] = figure.verdict
        return data


Benchmark = Callable[[Options], Report]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: an observed value, never an interpolation."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def show(value: float | int | str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}".rstrip("0").rstrip(".")


def render(report: Report) -> str:
    head = f"== {report.name}: {report.title}  [{report.seconds:.1f} s]"
    if report.skipped:
        return f"{head}\n  skipped: {report.skipped}\n"
    rows = [
        (f.name, f"{show(f.value)} {f.unit}".strip(), f.target, f.verdict) for f in report.figures
    ]
    widths = [max([len(r[i]) for r in rows] + [len(h)]) for i, h in enumerate(HEADERS)]
    lines = [head, "  " + "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines += [f"  - {note}" for note in report.notes]
    return "\n".join(line.rstrip() for line in lines) + "\n"


HEADERS = ("figure", "value", "target", "")
