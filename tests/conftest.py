"""Shared test set-up: no test reaches the internet or real AWS."""

from __future__ import annotations

import os

import pytest

# Before any boto3 client exists: fake credentials, a fixed region, no metadata look-ups.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SECURITY_TOKEN="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
    POWERTOOLS_SERVICE_NAME="crm-to-books",
    POWERTOOLS_METRICS_NAMESPACE="CrmToBooks",
    POWERTOOLS_TRACE_DISABLED="true",
    POWERTOOLS_DEV="false",
)
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_ENDPOINT_URL", None)

pytest_plugins = ["tests.support.iam"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests run last, so their session-wide local stacks (in-process emulator,
    SQS pollers) start after, and stop right after, everything else: nothing of theirs runs
    alongside a functional test's in-process moto. After them, the check of what every suite
    exercised of each function's role (tests/test_iam_exercised.py)."""
    items.sort(
        key=lambda item: (
            item.path.name == "test_iam_exercised.py",
            "/tests/e2e/" in str(item.path),
        )
    )
