"""Cold start: what each handler module costs to import, and what the layer and assets weigh.

Import times come from `python -X importtime` in a fresh interpreter per run, in a Lambda-like
environment (tracing on, as the stack deploys it), as a ratio to `import boto3` measured the
same way in the same run: the ratio travels between machines, milliseconds do not.

Three import figures per handler:
- **cached**: bytecode caches everywhere (a developer's machine), in a private
  PYTHONPYCACHEPREFIX so nothing is written into the environment or the repository;
- **as shipped**: laid out as Lambda mounts it, without site-packages: the function's asset as
  `infra.layer` builds it (/var/task), the layer's packages with bytecode compiled the way the
  layer build compiles them (/opt/python), and boto3 compiled (the runtime's /var/runtime);
- **without bytecode**: the same layout with sources only (what the layer shipped before), so
  every cold start compiles the layer's and the handler's modules again, since Lambda's /opt
  and /var/task are read-only.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core import Options, Report
from crm_to_books import topology
from infra.layer import PROVIDED_BY_RUNTIME, build_function, compile_bytecode, requirements

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
LIBRARY = ROOT / "layers" / "core" / "python"
# Modules a handler's warm calls never use, so its cold start should not pay for them.
# The X-Ray SDK only serves invocations X-Ray samples (crm_to_books.observability); the REST
# resolver only HTTP requests, which the importer loads on its first one.
UNSAMPLED = ("aws_xray_sdk",)
UNUSED: dict[str, tuple[str, ...]] = {
    "importer": (*UNSAMPLED, "aws_lambda_powertools.event_handler", "crm_to_books.api"),
    "status_api": (*UNSAMPLED, "crm_to_books.batch", "requests"),  # no Zoho call, no SQS
    "token_keeper": (
        *UNSAMPLED,
        "aws_lambda_powertools.event_handler",
        "crm_to_books.api",
        "crm_to_books.batch",
    ),
    "redrive": (
        *UNSAMPLED,
        "aws_lambda_powertools.event_handler",
        "crm_to_books.api",
        "crm_to_books.batch",
        "requests",  # re-driving reads the ledger and sends to SQS: no Zoho call
    ),
    "sweep": UNSAMPLED,
    "crm_hooks": UNSAMPLED,
}
# What a handler imports on its first call of one trigger (used by every warm call of that
# trigger, so it is part of that trigger's cold start, only not at import).
FIRST_CALL: dict[str, dict[str, str]] = {
    "importer": {"SQS": "crm_to_books.batch", "HTTP": "crm_to_books.api"},
}
IMPORTER_TARGET = 2.0  # issue 13: the importer's import as shipped, in `import boto3`s
# What the handler's import must not do: build clients or read settings (STYLE.md).
PROBE = """
import json, sys
from crm_to_books import aws, settings
print(json.dumps({"modules": sorted(sys.modules), "clients": aws.client.cache_info().currsize,
                  "settings_read": settings.get_settings.cache_info().currsize}))
"""


@dataclass(frozen=True, slots=True)
class Line:
    self_us: int
    cumulative_us: int
    depth: int
    name: str


def parse(stderr: str) -> list[Line]:
    lines = []
    for raw in stderr.splitlines():
        if not raw.startswith("import time:") or "self [us]" in raw:
            continue
        own, cumulative, name = raw.removeprefix("import time:").split("|", 2)
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        lines.append(Line(int(own), int(cumulative), depth, name.strip()))
    return lines


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POWERTOOLS_", "AWS_", "PYTHON", "IMPORT_KIND"))
    }
    return env | {
        "AWS_LAMBDA_FUNCTION_NAME": "bench-cold-start",  # Powertools: running in Lambda
        "AWS_REGION": "us-east-1",
        "IMPORT_KIND": "item",
        "POWERTOOLS_SERVICE_NAME": topology.SERVICE_NAME,
        **extra,
    }


def importtime(
    module: str, cwd: Path, path: list[Path], extra: dict[str, str], site: bool = True
) -> list[Line]:
    env = _env({"PYTHONPATH": os.pathsep.join(map(str, path)), **extra})
    done = subprocess.run(
        [sys.executable, *([] if site else ["-S"]), "-X", "importtime", "-c", f"import {module}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return parse(done.stderr)


def total_ms(lines: list[Line], module: str) -> float:
    return next(ln.cumulative_us for ln in lines if ln.depth == 0 and ln.name == module) / 1000


def _copy_distributions(names: list[str], target: Path) -> None:
    """The installed files of each distribution (sources, no bytecode), into `target`."""
    for name in names:
        dist = importlib.metadata.distribution(name)
        for file in dist.files or ():
            if "__pycache__" in file.parts or file.parts[0].endswith((".dist-info", "..")):
                continue
            destination = target / file
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(str(dist.locate_file(file))), destination)


def _with_dependencies(names: Iterable[str]) -> list[str]:
    """The installed distributions `names` need, themselves included (extras left out)."""
    found: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name.lower() in found:
            continue
        found.add(name.lower())
        for requirement in importlib.metadata.requires(name) or ():
            if "extra ==" not in requirement:
                todo += re.findall(r"^[A-Za-z0-9._-]+", requirement)
    return sorted(found)


@contextmanager
def shipped_layer() -> Iterator[Path]:
    """The layer's packages (sources only), from this environment's installs."""
    with tempfile.TemporaryDirectory(prefix="bench-layer-") as tmp:
        target = Path(tmp)
        _copy_distributions([pin.split("==")[0] for pin in requirements(ROOT).split()], target)
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(LIBRARY / "crm_to_books", target / "crm_to_books", ignore=ignore)
        yield target


@dataclass(frozen=True, slots=True)
class Lambda:
    """Directories laid out as Lambda's sys.path: /var/task, /opt/python, /var/runtime."""

    tasks: dict[str, Path]  # handler folder -> its asset
    opt: Path
    runtime: Path

    def path(self, handler: str) -> list[Path]:
        return [self.tasks[handler], self.opt, self.runtime]


@contextmanager
def lambda_layouts(handlers: list[str]) -> Iterator[tuple[Lambda, Lambda]]:
    """Lambda's layout as shipped (with bytecode) and the same without bytecode."""
    with shipped_layer() as sources, tempfile.TemporaryDirectory(prefix="bench-lambda-") as tmp:
        root = Path(tmp)
        runtime = root / "runtime"  # the runtime's boto3 (and what it needs) comes compiled
        _copy_distributions(_with_dependencies(PROVIDED_BY_RUNTIME), runtime)
        compile_bytecode(runtime, "/var/runtime")
        opt = root / "opt"
        shutil.copytree(sources, opt)
        compile_bytecode(opt, "/opt/python")  # as infra.layer compiles the layer
        bare = {}
        for h in handlers:
            bare[h] = root / "bare" / h
            shutil.copytree(
                FUNCTIONS / h, bare[h], ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )
        shipped = {h: build_function(FUNCTIONS / h)[0] for h in handlers}
        yield Lambda(shipped, opt, runtime), Lambda(bare, sources, runtime)


def _by_package(lines: list[Line]) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for ln in lines:
        totals[ln.name.split(".")[0]] += ln.self_us / 1000
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _imports(options: Options, report: Report) -> None:
    reps = 1 if options.quick else 5
    handlers = list(dict.fromkeys(s.handler_dir for s in topology.ALL_FUNCTIONS))
    present = [h for h in handlers if (FUNCTIONS / h / "handler.py").is_file()]
    for missing in sorted(set(handlers) - set(present)):
        report.notes.append(f"{missing}: skipped, functions/{missing}/handler.py does not exist")
    boto3_runs: list[float] = []
    runs: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    profile: dict[str, list[Line]] = {}
    with lambda_layouts(present) as (shipped, bare), tempfile.TemporaryDirectory() as pyc:
        warm = {"PYTHONPYCACHEPREFIX": pyc}
        # Lambda's layout: no site-packages (-S), and nothing written; every .pyc there is read.
        lambda_env = {"PYTHONDONTWRITEBYTECODE": "1"}
        for h in present:  # fills the caches: stdlib, boto3, and this environment's installs
            importtime("handler", FUNCTIONS / h, [FUNCTIONS / h, LIBRARY], warm)
        # Interleaved, so drift hits every figure alike; the fastest run is the one least
        # disturbed by whatever else the machine does.
        for _ in range(reps):
            lines = importtime("boto3", shipped.runtime, [shipped.runtime], lambda_env, site=False)
            boto3_runs.append(total_ms(lines, "boto3"))
            for h in present:
                lines = importtime("handler", FUNCTIONS / h, [FUNCTIONS / h, LIBRARY], warm)
                runs[h]["cached"].append(total_ms(lines, "handler"))
                lines = importtime("handler", shipped.tasks[h], shipped.path(h), lambda_env, False)
                runs[h]["shipped"].append(total_ms(lines, "handler"))
                if total_ms(lines, "handler") == min(runs[h]["shipped"]):
                    profile[h] = lines
                lines = importtime("handler", bare.tasks[h], bare.path(h), lambda_env, False)
                runs[h]["bare"].append(total_ms(lines, "handler"))
                for trigger, module in FIRST_CALL.get(h, {}).items():
                    both = f"handler, {module}"  # what the first call of that trigger adds
                    lines = importtime(both, shipped.tasks[h], shipped.path(h), lambda_env, False)
                    added = sum(ln.cumulative_us for ln in lines if ln.depth == 0) / 1000
                    runs[h][trigger].append(added)
    boto3_ms = min(boto3_runs)
    report.add("import boto3 (the unit), as the runtime has it", boto3_ms, "ms")
    per_handler: dict[str, dict[str, Any]] = {}
    for h in present:
        probe = _probe(h)
        unused = [m for m in UNUSED.get(h, ()) if m in probe["modules"]]
        ms, shipped_ms, bare_ms = (min(runs[h][v]) for v in ("cached", "shipped", "bare"))
        fine = not unused and not probe["clients"] and not probe["settings_read"]
        report.add(
            f"{h}: import, .pyc cached / as shipped / without bytecode",
            " / ".join(f"{v / boto3_ms:.1f}x" for v in (ms, shipped_ms, bare_ms)) + " boto3",
            f"({ms:.0f} / {shipped_ms:.0f} / {bare_ms:.0f} ms)",
            "nothing unused at import",
            fine,
        )
        if h == "importer":  # issue 13's goal
            report.add(
                "importer: import as shipped",
                f"{shipped_ms / boto3_ms:.1f}x boto3",
                target=f"<= {IMPORTER_TARGET:g}x boto3",
                ok=shipped_ms <= IMPORTER_TARGET * boto3_ms,
            )
        for trigger in FIRST_CALL.get(h, {}):
            first = min(runs[h][trigger])
            report.add(
                f"{h}: import + what its first {trigger} call imports, as shipped",
                f"{first / boto3_ms:.1f}x boto3",
                f"({first:.0f} ms)",
            )
        lines = profile[h]
        direct = sorted((ln for ln in lines if ln.depth == 1), key=lambda ln: -ln.cumulative_us)
        packages = _by_package(lines)
        report.notes.append(
            f"{h}: {len(probe['modules'])} modules; as shipped, self time by package: "
            + ", ".join(f"{p} {v:.0f}" for p, v in list(packages.items())[:6])
            + " ms; slowest direct imports: "
            + ", ".join(f"{ln.name} {ln.cumulative_us / 1000:.0f}" for ln in direct[:4])
            + " ms"
            + (f"; imports what it never uses: {', '.join(unused)}" if unused else "")
            + (f"; builds {probe['clients']} boto3 client(s) at import" if probe["clients"] else "")
            + ("; reads settings at import" if probe["settings_read"] else "")
        )
        per_handler[h] = {
            "import_ms": ms,
            "import_ms_as_shipped": shipped_ms,
            "import_ms_without_bytecode": bare_ms,
            "ratio_to_boto3": round(ms / boto3_ms, 2),
            "ratio_to_boto3_as_shipped": round(shipped_ms / boto3_ms, 2),
            "ratio_to_boto3_without_bytecode": round(bare_ms / boto3_ms, 2),
            "modules": len(probe["modules"]),
            "self_ms_by_package_as_shipped": {
                p: round(v, 1) for p, v in list(packages.items())[:10]
            },
            "direct_imports_ms_as_shipped": {
                ln.name: ln.cumulative_us / 1000 for ln in direct[:10]
            },
            "unused_imports": unused,
        }
    report.details["imports"] = {"boto3_ms": boto3_ms, "handlers": per_handler}


def _probe(handler: str) -> dict[str, Any]:
    code = "import handler\n" + PROBE
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=FUNCTIONS / handler,
        env=_env({"PYTHONPATH": f"{FUNCTIONS / handler}{os.pathsep}{LIBRARY}"}),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _size(directory: Path, zipped: bool = True) -> tuple[int, int]:
    """Bytes on disk and zipped (as CDK uploads an asset), bytecode included."""
    files = [p for p in directory.rglob("*") if p.is_file()]
    raw = sum(p.stat().st_size for p in files)
    if not zipped:
        return raw, 0
    with tempfile.TemporaryFile() as out:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for p in files:
                archive.write(p, p.relative_to(directory))
        return raw, out.tell()


def _sizes(report: Report) -> None:
    try:  # the CDK layer build (cached in .build/, rebuilt only when its inputs change)
        done = subprocess.run(
            [sys.executable, "-c", "from infra.layer import build_layer; print(build_layer()[0])"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=True,
        )
        layer = Path(done.stdout.strip().splitlines()[-1])
        what = "layer (infra/layer.py build, arm64)"
    except (subprocess.SubprocessError, OSError, IndexError) as exc:
        report.notes.append(f"layer build unavailable ({type(exc).__name__}): measured installs")
        layer, what = Path(tempfile.mkdtemp(prefix="bench-layer-")), "layer (installed deps)"
        with shipped_layer() as copy:
            shutil.copytree(copy, layer / "python")
    raw, zipped = _size(layer)
    report.add(f"{what}, unzipped / zipped", f"{raw / 2**20:.1f} / {zipped / 2**20:.1f}", "MB")
    bytecode = sum(p.stat().st_size for p in layer.rglob("*.pyc"))
    report.notes.append(f"layer: {bytecode / 2**20:.1f} MB of it is bytecode (unzipped)")
    packages = {
        p.name: _size(p, zipped=False)[0] if p.is_dir() else p.stat().st_size
        for p in (layer / "python").iterdir()
        if not p.name.endswith(".dist-info")
    }
    top = sorted(packages.items(), key=lambda kv: -kv[1])
    report.notes.append(
        "layer by package: " + ", ".join(f"{n} {b / 2**20:.1f} MB" for n, b in top[:7])
    )
    assets = {
        d.name: _size(build_function(d)[0])
        for d in sorted(FUNCTIONS.iterdir())
        if (d / "handler.py").is_file()
    }
    report.add(
        "function assets, zipped",
        ", ".join(f"{n} {z / 1024:.1f}" for n, (_, z) in assets.items()),
        "KB",
    )
    report.details["sizes"] = {
        "layer_dir": str(layer),
        "layer_bytes": raw,
        "layer_zipped_bytes": zipped,
        "layer_packages_bytes": dict(top),
        "function_assets_bytes": {n: {"raw": r, "zipped": z} for n, (r, z) in assets.items()},
    }


def run(options: Options) -> Report:
    report = Report("cold_start", "Cold start: handler import time, layer and asset sizes")
    _imports(options, report)
    _sizes(report)
    return report
