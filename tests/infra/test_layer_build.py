"""The Lambda code as built: the layer (the library plus pinned dependencies for Lambda's arm64
CPython 3.13) and each function's asset, both with bytecode the runtime loads as it is."""

from __future__ import annotations

import importlib.util
import marshal
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.constructs.lambda_defaults import FUNCTIONS_ROOT
from infra.layer import LIBRARY, build_function, build_layer

UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based, source never checked


@pytest.fixture(scope="module")
def layer():
    return build_layer()


def _bytecode_problems(directory: Path, shown_as: str) -> list[str]:
    """Every module under `directory` without a .pyc that 3.13 loads unchecked, as shipped."""
    problems = []
    for source in sorted(directory.rglob("*.py")):
        pyc = Path(importlib.util.cache_from_source(str(source)))
        name = source.relative_to(directory).as_posix()
        if not pyc.is_file():
            problems.append(f"{name}: no {pyc.name}")
            continue
        data = pyc.read_bytes()
        if data[:4] != importlib.util.MAGIC_NUMBER:
            problems.append(f"{name}: compiled by another Python version")
        elif int.from_bytes(data[4:8], "little") != UNCHECKED_HASH:
            problems.append(f"{name}: not unchecked-hash")
        elif data[8:16] != importlib.util.source_hash(source.read_bytes()):
            problems.append(f"{name}: compiled from another source")
        elif (shown := marshal.loads(data[16:]).co_filename) != f"{shown_as}/{name}":  # noqa: S302
            problems.append(f"{name}: names {shown}")
    return problems


def _imports_without_its_source(site: Path, module: str, tmp_path: Path) -> str:
    """Imports `module` from a copy of `site` whose source now raises: only bytecode loads it.

    That is a read-only /opt on Lambda: nothing recompiles, whatever the files' timestamps.
    """
    copy = tmp_path / "opt"
    shutil.copytree(site, copy)
    source = copy / Path(*module.split(".")) / "__init__.py"
    if not source.is_file():
        source = source.parent.with_suffix(".py")
    source.write_text('raise ImportError("compiled from source")\n', encoding="utf-8")
    # The copy first on the path, as /opt/python is on Lambda; no user site, no current folder.
    done = subprocess.run(
        [sys.executable, "-s", "-P", "-B", "-c", f"import {module}; print({module}.__file__)"],
        env={"PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_layer_holds_the_library_and_its_dependencies(layer):
    directory, _ = layer
    site = directory / "python"
    assert (site / "crm_to_books" / "__init__.py").is_file()
    shipped = sorted(p.name for p in (site / "crm_to_books").glob("*.py"))
    assert shipped == sorted(p.name for p in LIBRARY.glob("*.py"))
    for package in ("pydantic", "requests", "aws_lambda_powertools", "aws_xray_sdk"):
        assert (site / package).is_dir(), package


def test_native_code_is_built_for_lambda(layer):
    directory, _ = layer
    (core,) = (directory / "python" / "pydantic_core").glob("_pydantic_core*.so")
    assert core.name == "_pydantic_core.cpython-313-aarch64-linux-gnu.so"
    assert core.read_bytes()[:4] == b"\x7fELF"
    assert core.read_bytes()[18] == 183  # e_machine: EM_AARCH64


def test_every_module_of_the_layer_ships_its_bytecode(layer):
    directory, _ = layer
    assert _bytecode_problems(directory / "python", "/opt/python") == []


@pytest.mark.parametrize("module", ["crm_to_books", "jmespath"])
def test_layer_bytecode_loads_without_its_source(layer, module, tmp_path):
    # Given the layer's library and a pure-Python dependency, each from its own build step
    directory, _ = layer
    # When the source no longer matches (and is newer than) the bytecode
    loaded = _imports_without_its_source(directory / "python", module, tmp_path)
    # Then the bytecode is what runs
    assert loaded.startswith(str(tmp_path / "opt"))


def test_layer_leaves_out_the_sdk_and_build_debris(layer):
    directory, _ = layer
    site = directory / "python"
    for provided in ("boto3", "botocore", "s3transfer", "bin"):
        assert not (site / provided).exists(), provided
    stray = [p for p in site.rglob("*.pyc") if p.parent.name != "__pycache__"]
    assert stray == []
    foreign = [p.name for p in site.rglob("*.pyc") if ".cpython-313." not in p.name]
    assert foreign == []


def test_build_is_cached_by_its_inputs(layer):
    assert build_layer() == layer


@pytest.mark.parametrize("folder", sorted(p.name for p in FUNCTIONS_ROOT.iterdir() if p.is_dir()))
def test_function_asset_is_its_folder_with_bytecode(folder, tmp_path):
    source = FUNCTIONS_ROOT / folder
    directory, digest = build_function(source, build_root=tmp_path)
    files = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    sources = {
        p.relative_to(source).as_posix()
        for p in source.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert "handler.py" in sources
    assert files == sources | {"__pycache__/handler.cpython-313.pyc"}
    assert _bytecode_problems(directory, "/var/task") == []
    assert build_function(source, build_root=tmp_path) == (directory, digest)


def test_function_asset_is_rebuilt_when_its_folder_changes(tmp_path):
    source = tmp_path / "src" / "importer"
    shutil.copytree(FUNCTIONS_ROOT / "importer", source, ignore=shutil.ignore_patterns("__pyc*"))
    first, first_digest = build_function(source, build_root=tmp_path / "build")
    with (source / "handler.py").open("a", encoding="utf-8") as handler:
        handler.write("\nCHANGED = True\n")
    second, second_digest = build_function(source, build_root=tmp_path / "build")
    assert second_digest != first_digest
    assert "CHANGED = True" in (second / "handler.py").read_text(encoding="utf-8")
    assert _bytecode_problems(second, "/var/task") == []
    assert not first.exists()  # one build per function is kept
