"""`python -m bench [NAME ...] [--quick]`: run the benchmarks, print their figures, store them.

Results go to bench/results/latest.json. Progress goes to stderr, figures to stdout.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import BENCHMARKS
from bench.core import Options, Report, render

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
# The whole run must end: a hung benchmark dumps every thread's stack and exits.
WATCHDOG_SECONDS = {False: 1800, True: 600}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = [n for n in BENCHMARKS if n in args.names] if args.names else list(BENCHMARKS)
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS[args.quick], exit=True)

    options = Options(quick=args.quick)
    run: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *args.names, *(["--quick"] * args.quick)]),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average": os.getloadavg()[0],  # other work on the machine skews the timings
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }
    started = time.monotonic()
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        began = time.monotonic()
        try:
            report = BENCHMARKS[name](options)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            report = Report(name, "broken", skipped=f"error: {type(exc).__name__}: {exc}")
        report.seconds = time.monotonic() - began
        options.earlier[name] = report
        print(render(report), flush=True)
    faulthandler.cancel_dump_traceback_later()

    reports = options.earlier.values()
    missed = [f"{r.name}: {f.name}" for r in reports for f in r.figures if f.ok is False]
    missed += [f"{r.name}: broken" for r in reports if r.title == "broken"]
    print(f"{len(names)} benchmarks in {time.monotonic() - started:.0f} s; ", end="")
    print(f"missed: {'; '.join(missed)}" if missed else "every target met")
    run["seconds"] = round(time.monotonic() - started)
    run["benchmarks"] = {r.name: r.as_json() for r in reports}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(run, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"results: {RESULTS}")
    broken = [r.name for r in reports if r.skipped and r.skipped.startswith("error:")]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
