"""SQS throughput: imports per second through one kind's queue, end to end on the local stack.

A zero-latency sandbox and no Zoho limit, so the figure is the service's own capacity (queue
poller, batches of 10, up to 5 concurrent batches per queue as deployed, the function's
containers, the AWS emulator). Production throughput per organization is bounded by Zoho's
limit (100 a minute) long before this.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench.core import Options, Report
from bench.local import Unavailable, local_stack

KIND = "item"
FIRST_ID = 40_000
STALL_SECONDS = 30.0  # no import for this long: the stack is stuck, stop waiting
# A failed batch comes back after the queue's visibility timeout (180 s as deployed): short
# here, so a failure costs throughput instead of stalling the run.
VISIBILITY_SECONDS = 10


def _body(org: str, n: int) -> str:
    return json.dumps({"organization_id": org, "crm_id": str(FIRST_ID + n)})


def _footprint(pid: int) -> tuple[float, float] | None:
    """A container process's peak resident memory (MB) and CPU seconds so far (Linux /proc):
    what the cost model sizes the functions' memory from."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    peak_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return peak_kb / 1024, ticks / os.sysconf("SC_CLK_TCK")


def run(options: Options) -> Report:
    report = Report("sqs_throughput", f"SQS throughput, one queue ({KIND})")
    n = 100 if options.quick else 300
    try:
        with local_stack(visibility_timeout=VISIBILITY_SECONDS) as local:
            stack, org = local.stack, local.org
            sqs, url = stack.client("sqs"), stack.queue_urls[KIND]
            started = time.monotonic()
            for at in range(0, n, 10):
                batch = range(at, min(at + 10, n))
                entries = [{"Id": str(i), "MessageBody": _body(org, i)} for i in batch]
                sqs.send_message_batch(QueueUrl=url, Entries=entries)
            sent = time.monotonic() - started
            done, progressed = 0, time.monotonic()
            while done < n and time.monotonic() - progressed < STALL_SECONDS:
                time.sleep(0.05)
                counters: dict[str, Any] = stack.sandbox.counters()
                imports = counters["imports"].get(org, {}).get(KIND, {})
                now_done = sum(1 for crm_id in imports if int(crm_id) >= FIRST_ID)
                if now_done > done:
                    done, progressed = now_done, time.monotonic()
            elapsed = progressed - started
            containers = len(stack.container_pids())
            footprint = [_footprint(pid) for pid in stack.container_pids()]
            emulator_errors = local.emulator_errors.count
            emulator_error = local.emulator_errors.last
            error = local.lines.last_error() if done < n else None
    except Unavailable as exc:
        report.skipped = str(exc)
        return report
    measured = [f for f in footprint if f is not None]
    peak_mb = max((rss for rss, _ in measured), default=0.0)
    cpu_ms = sum(cpu for _, cpu in measured) * 1000 / max(done, 1)
    report.add("imports per second, one queue", done / elapsed, "imports/s")
    report.add("a container's peak memory (VmHWM)", round(peak_mb, 1), "MB")
    report.add("container CPU time per import, cold starts included", round(cpu_ms, 1), "ms")
    report.add("imports done", done, f"of {n} in {elapsed:.1f} s", f"{n}", done == n)
    report.notes.append(
        f"{n} messages sent in batches of 10 in {sent:.1f} s; {containers} containers at the "
        "end; the time includes the first batch's batching window (2 s)"
    )
    if emulator_errors:
        report.notes.append(
            f"the AWS emulator (moto's threaded server) failed {emulator_errors} requests with "
            f"concurrent containers ({emulator_error}); the clients' retries and SQS "
            "redelivery absorbed them, at a cost in throughput"
        )
    if error:
        report.notes.append(f"stalled; last error in the containers: {error}")
    report.details = {
        "messages": n,
        "done": done,
        "seconds": elapsed,
        "containers": containers,
        "emulator_errors": emulator_errors,
        "peak_rss_mb": peak_mb,
        "cpu_ms_per_import": cpu_ms,
    }
    return report
