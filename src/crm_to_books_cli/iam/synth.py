"""The CloudFormation template of the real CDK app (`infra.app.build_app`, cdk-nag included) for a
local configuration, cached in `.build/iam/` by a hash of everything the synthesis reads: the
configuration, `infra/`, `cdk.json` (CDK's feature flags), `uv.lock` (the CDK version) and the
runtime library's modules `infra/` imports (found by reading its imports).

The local stack reads only the roles from it. The function and layer assets are not inputs of
the hash (they change the template's asset hashes, never a role), so a cached template's asset
hashes may be older than the code.

A synthesis runs in this process when `in_process` is set (the test session does: the CDK's
JavaScript runtime then starts once for every stack and the infra tests), else in a child
process (`crm-to-books dev`: the runtime's memory is given back once the template is written).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
LIBRARY = ROOT / "layers" / "core" / "python" / "crm_to_books"
CACHE = ROOT / ".build" / "iam" / "templates"
FORMAT = "1"  # bump when what is cached changes shape
KEEP = 20  # cached templates kept (one per configuration in use)
LOCAL_STAGE = "local"

in_process = False


class SynthesisFailed(RuntimeError):
    pass


def local_config(
    prefix: str, organizations: Mapping[str, Mapping[str, Any]], connections: Sequence[str]
) -> dict[str, Any]:
    """The stack's configuration (cdk.json's shape) for a local stack's resources."""
    return {
        "stage": LOCAL_STAGE,
        "prefix": prefix,
        "connections": list(connections),
        "organizations": {org: dict(values) for org, values in sorted(organizations.items())},
    }


def _library_imports(tree: ast.Module, library: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "crm_to_books":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("crm_to_books."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {
                a.name.split(".")[1] for a in node.names if a.name.startswith("crm_to_books.")
            }
    return {name for name in found if (library / f"{name}.py").is_file()}


def inputs(root: Path = ROOT) -> list[Path]:
    """Every file the synthesis reads that can change a role."""
    library = root / LIBRARY.relative_to(ROOT)
    infra = sorted((root / "infra").rglob("*.py"))
    todo = {m for path in infra for m in _library_imports(ast.parse(path.read_bytes()), library)}
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        seen.add(name)
        tree = ast.parse((library / f"{name}.py").read_bytes())
        todo |= _library_imports(tree, library) - seen
    modules = [library / f"{name}.py" for name in sorted(seen)]
    return [*infra, root / "cdk.json", root / "uv.lock", *modules]


def digest(config: Mapping[str, Any], root: Path = ROOT) -> str:
    h = hashlib.sha256(FORMAT.encode())
    h.update(json.dumps(config, sort_keys=True).encode())
    for path in inputs(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:24]


def synthesize(config: Mapping[str, Any]) -> dict[str, Any]:
    """The template, synthesized in this process."""
    from infra.app import build_app
    from infra.config import parse_config

    parsed = parse_config(dict(config), "the local stack's configuration")
    with tempfile.TemporaryDirectory(prefix="iam-synth-") as outdir:
        app, stack = build_app(parsed, outdir=outdir)
        app.synth()
        template: dict[str, Any] = json.loads((Path(outdir) / stack.template_file).read_text())
    return template


def _child_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    for name in ("CDK_DEFAULT_ACCOUNT", "CDK_DEFAULT_REGION"):
        env.pop(name, None)  # environment-agnostic, as `make synth` makes it
    return env


def _write(target: Path, template: Mapping[str, Any]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.{os.getpid()}")
    staging.write_text(json.dumps(template), encoding="utf-8")
    staging.replace(target)


def _prune(cache: Path, keep: int) -> None:
    entries = sorted(cache.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[keep:]:
        stale.unlink(missing_ok=True)


class Synthesis:
    """The template for `config`: the cached one if every input is unchanged, else a new
    synthesis, started at once in a child process (unless `in_process`) so that the caller can
    do other work meanwhile; `template()` waits for it."""

    def __init__(self, config: Mapping[str, Any], cache: Path = CACHE, root: Path = ROOT) -> None:
        self.config = dict(config)
        self.cache = cache
        self.path = cache / f"{digest(config, root)}.json"
        self.hit = self.path.is_file()
        self._child: subprocess.Popen[str] | None = None
        if self.hit:
            self.path.touch()  # recently used: kept by the pruning
        elif not in_process:
            command = [sys.executable, "-m", "crm_to_books_cli.iam.synth", str(self.path)]
            self._child = subprocess.Popen(  # noqa: S603 (this interpreter, this module)
                [*command, json.dumps(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=_child_env(),
                text=True,
            )

    def template(self) -> dict[str, Any]:
        if not self.path.is_file():
            self._make()
            _prune(self.cache, KEEP)
        result: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        return result

    def _make(self) -> None:
        if self._child is None:
            try:
                _write(self.path, synthesize(self.config))
            except Exception as exc:
                raise SynthesisFailed(f"synthesizing the stack failed: {exc}") from exc
            return
        output, _ = self._child.communicate()
        if self._child.returncode:
            raise SynthesisFailed(f"synthesizing the stack failed:\n{output}")

    def cancel(self) -> None:
        if self._child is not None and self._child.poll() is None:
            self._child.kill()
            self._child.wait()


def template(config: Mapping[str, Any], cache: Path = CACHE) -> dict[str, Any]:
    return Synthesis(config, cache).template()


def _main(argv: list[str]) -> int:
    target, config = argv
    _write(Path(target), synthesize(json.loads(config)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
