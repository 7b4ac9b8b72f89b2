"""`crm-to-books bulk FILE.csv`: enqueue many imports, then follow them to completion.

Rows are `kind,organization_id,crm_id` (a header row is optional and may reorder the columns).
A bad row is reported with its line number and reason and skipped; the good rows still go.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from crm_to_books.errors import InvalidRequest
from crm_to_books.models import ImportRequest
from crm_to_books_cli import output, target
from crm_to_books_cli.api_client import Api
from crm_to_books_cli.target import CliError, Target

COLUMNS = ("kind", "organization_id", "crm_id")
SQS_BATCH = 10
SEND_ATTEMPTS = 4
POLL_THREADS = 8
DONE = ("succeeded", "failed", "parked", "in DLQ")


@dataclass
class Row:
    line: int
    request: ImportRequest
    status: str = "not sent"  # then queued, and at last one of DONE (or still pending)
    reason: str = ""
    record: dict[str, Any] = field(default_factory=dict)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "bulk",
        help="import the rows of a CSV file (kind,organization_id,crm_id) through the queues",
        description="Validates every row (bad rows are reported by line and skipped), sends the "
        "good ones to their kind's queue in batches of 10, then follows each import until it "
        "succeeded, failed or was parked (or --timeout), and prints a summary. Exit 0 when "
        "every row was imported, 1 otherwise.",
    )
    parser.add_argument(
        "file", metavar="FILE.csv", type=Path, help="rows kind,organization_id,crm_id"
    )
    parser.add_argument("--no-follow", action="store_true", help="only enqueue")
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds to follow the imports (900)"
    )
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="seconds between status rounds (1)"
    )
    target.add_arguments(parser)
    parser.set_defaults(func=target.command(run))


def run(args: argparse.Namespace) -> int:
    rows, problems = read_rows(args.file)
    where = target.resolve(args)
    api = Api(where)
    rows, refused = _served(api, rows)
    problems = sorted(problems + refused)
    err, out = output.console(stderr=True), output.console()
    for line, reason in problems:
        err.print(f"{args.file}: line {line}: {reason} (skipped)")
    run_id = f"bulk-{uuid.uuid4().hex[:12]}"
    _enqueue(where, rows, run_id)
    if not args.no_follow:
        _follow(api, [r for r in rows if r.status == "queued"], run_id, args)
    _summary(out, rows, problems, followed=not args.no_follow)
    wanted = "queued" if args.no_follow else "succeeded"
    return 0 if not problems and all(r.status == wanted for r in rows) else 1


def read_rows(path: Path) -> tuple[list[Row], list[tuple[int, str]]]:
    """The valid rows, and (line, reason) for each bad one."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CliError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise CliError(f"{path}: is not UTF-8 text") from None
    rows: list[Row] = []
    problems: list[tuple[int, str]] = []
    seen: dict[tuple[str, str, str], int] = {}
    columns: tuple[str, ...] = COLUMNS
    first = True
    for line, cells in _records(text):
        if first and {c.lower() for c in cells} == set(COLUMNS) and len(cells) == 3:
            columns, first = tuple(c.lower() for c in cells), False
            continue
        first = False
        if len(cells) != len(COLUMNS):
            problems.append((line, f"expected 3 fields ({','.join(columns)}), got {len(cells)}"))
            continue
        fields = dict(zip(columns, cells, strict=True))
        try:
            request = ImportRequest.parse(**fields, source="cli")
        except InvalidRequest as exc:
            problems.append((line, output.invalid(exc, fields)))
            continue
        if request.key in seen:
            problems.append((line, f"duplicate of line {seen[request.key]}"))
            continue
        seen[request.key] = line
        rows.append(Row(line, request))
    if not rows and not problems:
        raise CliError(f"{path}: no rows (expected kind,organization_id,crm_id per line)")
    return rows, problems


def _records(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, stripped cells) of each non-blank, non-comment row."""
    reader = csv.reader(text.splitlines())
    for cells in reader:
        stripped = [c.strip() for c in cells]
        if not any(stripped) or stripped[0].startswith("#"):
            continue
        yield reader.line_num, stripped


def _served(api: Api, rows: list[Row]) -> tuple[list[Row], list[tuple[int, str]]]:
    """Rows of organizations the service serves; the others as problems (one call per org)."""
    refusals = {
        org: api.check_organization(org) for org in {r.request.organization_id for r in rows}
    }
    kept = [r for r in rows if refusals[r.request.organization_id] is None]
    refused = [(r.line, str(refusals[r.request.organization_id])) for r in rows if r not in kept]
    return kept, refused


def _progress(what: str) -> Progress:
    return Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=output.console(stderr=True),
    )


def _enqueue(where: Target, rows: list[Row], run_id: str) -> None:
    sqs = where.client("sqs")
    by_kind: dict[str, list[Row]] = {}
    for row in rows:
        by_kind.setdefault(row.request.kind, []).append(row)
    with _progress("enqueue") as progress:
        task = progress.add_task("", total=len(rows), note="")
        for kind, kind_rows in by_kind.items():
            url = where.queue_url(kind)
            for start in range(0, len(kind_rows), SQS_BATCH):
                batch = {str(r.line): r for r in kind_rows[start : start + SQS_BATCH]}
                _send(sqs, url, batch, run_id)
                progress.advance(task, len(batch))
                progress.update(task, note=f"{kind}")


def _send(sqs: Any, url: str, batch: dict[str, Row], run_id: str) -> None:
    """SendMessageBatch, sending failed entries again (not the sender's faults) with back-off."""
    left = dict(batch)
    for attempt in range(SEND_ATTEMPTS):
        entries = [
            {
                "Id": line,
                "MessageBody": json.dumps(
                    {"organization_id": row.request.organization_id, "crm_id": row.request.crm_id}
                ),
                "MessageAttributes": {
                    "correlation_id": {"DataType": "String", "StringValue": run_id},
                    "source": {"DataType": "String", "StringValue": "cli"},
                },
            }
            for line, row in left.items()
        ]
        answer = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        for ok in answer.get("Successful", []):
            left.pop(ok["Id"]).status = "queued"
        for failed in answer.get("Failed", []):
            row = left[failed["Id"]]
            row.reason = f"SQS refused it: {failed.get('Code')}: {failed.get('Message', '')}"
            if failed.get("SenderFault"):
                left.pop(failed["Id"])
        if not left:
            return
        time.sleep(0.5 * 2**attempt)


def _follow(api: Api, rows: list[Row], run_id: str, args: argparse.Namespace) -> None:
    """Poll each import's record until it is done (for this run) or the time is up."""
    deadline = time.monotonic() + args.timeout
    pending = list(rows)
    with (
        _progress("imports") as progress,
        ThreadPoolExecutor(POLL_THREADS) as pool,
    ):
        task = progress.add_task("", total=len(rows), note="")
        while pending:
            states = list(pool.map(lambda r: _state(api, r, run_id), pending))
            pending = [r for r, done in zip(pending, states, strict=True) if not done]
            counts = Counter(r.status for r in rows if r.status in DONE)
            progress.update(
                task,
                completed=len(rows) - len(pending),
                note=" ".join(f"{k} {v}" for k, v in sorted(counts.items())),
            )
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(args.poll_interval)
    for row in pending:
        seen = row.record.get("status", "not recorded yet")
        row.status, row.reason = "pending", f"still {seen} after {args.timeout:g} s"


def _state(api: Api, row: Row, run_id: str) -> bool:
    """Read the row's record; True when it reached an end for this run."""
    request = row.request
    answer = api.get_record(request.kind, request.crm_id, request.organization_id)
    if answer.status != 200 or answer.record is None:
        return False  # 404: the queue has not delivered it yet; 5xx: ask again next round
    record = row.record = answer.record
    status = record.get("status")
    if status == "succeeded":
        row.status = "succeeded"
        return True
    if run_id not in record.get("correlation_ids", []):
        return False  # an earlier import's record: wait for this run's attempt
    if status == "failed":
        row.status = "failed"
    elif record.get("in_dlq"):
        row.status = "in DLQ"
    elif status == "retrying" and record.get("parked"):
        row.status = "parked"
    else:
        return False
    row.reason = output.why(record) or str(record.get("detail", ""))
    return True


def _summary(out: Any, rows: list[Row], problems: list[tuple[int, str]], followed: bool) -> None:
    counts = Counter(r.status for r in rows)
    if problems:
        counts["invalid row (skipped)"] = len(problems)
    table = output.table("outcome", "rows", title="bulk import")
    for status, count in sorted(counts.items()):
        table.add_row(status, str(count))
    out.print(table)
    bad = [r for r in rows if r.status not in ("succeeded", "queued")]
    if bad:
        failures = output.table("line", "kind", "crm_id", "organization", "outcome", "reason")
        for r in bad:
            req = r.request
            failures.add_row(
                str(r.line), req.kind, req.crm_id, req.organization_id, r.status, r.reason
            )
        out.print(failures)
    if not followed:
        out.print("queued; follow with: crm-to-books status --org ORG (or failures --org ORG)")
