"""Builds the Lambda code locally (no Docker): the layer and each function's asset.

The layer holds the runtime library and its pinned dependencies. Dependencies come from uv.lock
(`uv export`), installed as wheels for Lambda's platform (CPython 3.13, manylinux aarch64) with
`--no-deps`, so the layer holds exactly the locked versions. A function's asset is its own folder
under `functions/`, nothing around it.

Both ship bytecode compiled by a 3.13 interpreter (`compileall --invalidation-mode
unchecked-hash`): Lambda's /opt and /var/task are read-only, so without it every cold start
compiles every module again, and unchecked .pyc files are used as they are, whatever the zip's
timestamps. Builds are cached under `.build/`, keyed by a hash of every input.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "layers" / "core" / "python" / "crm_to_books"
BUILD_ROOT = ROOT / ".build"

# Lambda's Python (infra/constructs/layer.py RUNTIME): the interpreter that builds must be the
# same minor version, since bytecode only loads on the version that wrote it.
PYTHON_VERSION = "3.13"
PLATFORM = "aarch64-manylinux2014"
# The Lambda runtime ships the AWS SDK; a second copy would only grow the layer.
PROVIDED_BY_RUNTIME = frozenset({"boto3", "botocore", "s3transfer"})
BUILD_FORMAT = "2"  # bump when the layout of the build changes

_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[^\s;]+$")


def _uv() -> list[str]:
    found = os.environ.get("UV") or shutil.which("uv")  # `uv run` exports its own path as UV
    command = [found] if found else [sys.executable, "-m", "uv"]
    # The CDK CLI sets FORCE_COLOR=0, which uv reads as "force colour": ask for plain text.
    return [*command, "--color", "never"]


def requirements(root: Path = ROOT) -> str:
    """The runtime dependencies pinned by uv.lock, without the ones Lambda provides."""
    export = ["export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project"]
    exported = subprocess.run(  # noqa: S603 (fixed argv, no shell)
        [*_uv(), *export, "--no-header", "--no-annotate", "--quiet"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = [line.strip() for line in exported.splitlines() if _PIN.match(line.strip())]
    if not pins:
        raise RuntimeError(f"uv export printed no pinned requirements:\n{exported}")
    kept = [pin for pin in pins if pin.split("==", 1)[0].lower() not in PROVIDED_BY_RUNTIME]
    return "\n".join(sorted(kept)) + "\n"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:20]


def compile_bytecode(directory: Path, shown_as: str) -> None:
    """Compiles every module under `directory` to `__pycache__/*.cpython-313.pyc`.

    `unchecked-hash` .pyc files are loaded without looking at the source's timestamp or content.
    `shown_as` is the directory as Lambda mounts it (/opt/python, /var/task): the path the code
    objects carry, whatever directory the build ran in.
    """
    if f"{sys.version_info.major}.{sys.version_info.minor}" != PYTHON_VERSION:
        raise RuntimeError(
            f"bytecode for Lambda's Python {PYTHON_VERSION} cannot be compiled by Python "
            f"{sys.version.split()[0]} ({sys.executable}): run through `uv run` (`make install`)"
        )
    command = [sys.executable, "-m", "compileall", "-q", "-j", "0", "-d", shown_as]
    command += ["--invalidation-mode", "unchecked-hash", str(directory)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode:
        raise RuntimeError(f"compileall failed in {directory}:\n{done.stdout}{done.stderr}")


def _tree_digest(directory: Path) -> str:
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )
    return _digest(
        *(p.relative_to(directory).as_posix().encode() + b"\0" + p.read_bytes() for p in files)
    )


@contextmanager
def _building(directory: Path, key: str) -> Iterator[Path]:
    """A private directory to build in, moved to `directory/key` when the block succeeds."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=directory))
    staging.chmod(0o755)  # mkdtemp's 0700 would end up in the zip; Lambda must read the files
    try:
        yield staging
        staging.rename(directory / key)
    except OSError:
        if not (directory / key).is_dir():  # else another process won the race
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _prune(directory, keep=key)


def _prune(directory: Path, keep: str) -> None:
    for entry in directory.iterdir():
        if entry.name != keep and not entry.name.startswith("."):
            shutil.rmtree(entry, ignore_errors=True)


def _dependencies(pins: str, build_root: Path) -> Path:
    """Site-packages holding the pinned wheels for Lambda's platform, cached by the pins."""
    key = _digest(BUILD_FORMAT.encode(), PLATFORM.encode(), PYTHON_VERSION.encode(), pins.encode())
    cache = build_root / "deps"
    target = cache / key
    if target.is_dir():
        return target
    with _building(cache, key) as staging:
        requirements_file = staging / "requirements.txt"
        requirements_file.write_text(pins, encoding="utf-8")
        site = staging / "python"
        install = [*_uv(), "pip", "install", "--quiet", "--no-deps", "--no-compile"]
        install += ["--only-binary", ":all:", "--python-platform", PLATFORM]
        install += ["--python-version", PYTHON_VERSION, "--target", str(site)]
        subprocess.run([*install, "-r", str(requirements_file)], check=True)  # noqa: S603
        # Console scripts carry this machine's interpreter path: useless on Lambda.
        shutil.rmtree(site / "bin", ignore_errors=True)
        requirements_file.unlink()
        compile_bytecode(site, "/opt/python")
    return target


def build_layer(root: Path = ROOT, build_root: Path = BUILD_ROOT) -> tuple[Path, str]:
    """The layer's directory (holding `python/`) and a hash of everything in it.

    Rebuilt only when the pinned dependencies or the library change.
    """
    pins = requirements(root)
    deps = _dependencies(pins, build_root)
    library = root / "layers" / "core" / "python" / "crm_to_books"
    key = _digest(deps.name.encode(), _tree_digest(library).encode())
    layers = build_root / "layer"
    target = layers / key
    if target.is_dir():
        return target, key
    with _building(layers, key) as staging:
        shutil.copytree(deps / "python", staging / "python")
        shutil.copytree(library, staging / "python" / "crm_to_books", ignore=_IGNORED)
        compile_bytecode(staging / "python" / "crm_to_books", "/opt/python/crm_to_books")
    return target, key


def build_function(source: Path, build_root: Path = BUILD_ROOT) -> tuple[Path, str]:
    """A function's asset directory (its folder's files and their bytecode) and its hash.

    Rebuilt only when a file in the folder changes.
    """
    key = _digest(BUILD_FORMAT.encode(), PYTHON_VERSION.encode(), _tree_digest(source).encode())
    builds = build_root / "functions" / source.name
    target = builds / key
    if target.is_dir():
        return target, key
    with _building(builds, key) as staging:
        shutil.copytree(source, staging, ignore=_IGNORED, dirs_exist_ok=True)
        compile_bytecode(staging, "/var/task")
    return target, key


if __name__ == "__main__":
    directory, digest = build_layer()
    print(f"{directory} ({digest})")
