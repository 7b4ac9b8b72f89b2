"""`LazyClient`: a class's boto3 client, injected or built on first use."""

from __future__ import annotations

from typing import Any


class LazyClient:
    """The owner's `_client` when one was injected (tests, the bench), else the shared client
    for `service`, built on first use: boto3 is imported only when a call needs it."""

    def __init__(self, service: str) -> None:
        self.service = service

    def __get__(self, owner: Any, kind: type | None = None) -> Any:
        if owner is None:
            return self
        if owner._client is None:
            from crm_to_books import aws

            owner._client = aws.client(self.service)
        return owner._client
