"""The layer: the library plus pinned dependencies built for Lambda's arm64 CPython 3.14."""

from __future__ import annotations

import pytest

from infra.layer import LIBRARY, build_layer


@pytest.fixture(scope="module")
def layer():
    return build_layer()


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
    assert core.name == "_pydantic_core.cpython-314-aarch64-linux-gnu.so"
    assert core.read_bytes()[:4] == b"\x7fELF"
    assert core.read_bytes()[18] == 183  # e_machine: EM_AARCH64


def test_layer_leaves_out_the_sdk_and_build_debris(layer):
    directory, _ = layer
    site = directory / "python"
    for provided in ("boto3", "botocore", "s3transfer", "bin"):
        assert not (site / provided).exists(), provided
    assert not list(site.rglob("__pycache__"))


def test_build_is_cached_by_its_inputs(layer):
    assert build_layer() == layer
