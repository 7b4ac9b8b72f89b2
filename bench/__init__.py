"""Benchmarks of crm-to-books (`make bench`, `python -m bench NAME`); figures in docs/benchmarks.md.

Never timed assertions: each benchmark prints its figures against their targets (PASS/MISS).
"""

from __future__ import annotations

from bench import (
    aws_calls,
    cold_start,
    cost,
    crm,
    many_orgs,
    naive,
    overhead,
    rate_limit,
    throughput,
    token_economy,
)
from bench.core import Benchmark

# In run order: the cost model comes last and reuses what the others measured.
BENCHMARKS: dict[str, Benchmark] = {
    "tokens": token_economy.run,
    "rate_limit": rate_limit.run,
    "rate_limit_60s": rate_limit.run_real,
    "aws_calls": aws_calls.run,
    "naive": naive.run,
    "many_orgs": many_orgs.run,
    "overhead": overhead.run,
    "sqs_throughput": throughput.run,
    "cold_start": cold_start.run,
    "crm_sweep": crm.run_sweep,
    "crm_latency": crm.run_latency,
    "cost": cost.run,
}
