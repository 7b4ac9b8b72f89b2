"""Which Zoho the local stack talks to: the in-process sandbox, or one named by ZOHO_* variables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from crm_to_books.entities import KINDS


class Sandbox(Protocol):
    """What the local stack uses of `crm_to_books_cli.sandbox.ZohoSandbox`."""

    def start(self) -> object: ...
    def stop(self) -> object: ...
    @property
    def url(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def client_secret(self) -> str: ...
    @property
    def refresh_token(self) -> str: ...
    @property
    def organizations(self) -> Sequence[str]: ...
    @property
    def crm_ids(self) -> Mapping[str, Any]: ...  # kind -> seeded CRM ids


ENV_VARS = ("ZOHO_CLIENT_ID", "ZOHO_CLIENT_SECRET", "ZOHO_REFRESH_TOKEN", "ZOHO_ORGANIZATION_IDS")


@dataclass(frozen=True, slots=True)
class ZohoAccount:
    """A Zoho (real, or Zoho-compatible) account: the connection secret plus its organizations."""

    accounts_url: str
    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)
    organizations: tuple[str, ...]
    crm_ids: Mapping[str, Sequence[str]] = field(default_factory=dict)  # seeded records, if known

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ZohoAccount | None:
        """The account ZOHO_ACCOUNTS_URL and friends name; None when it is not set."""
        accounts_url = env.get("ZOHO_ACCOUNTS_URL", "").strip()
        if not accounts_url:
            return None
        missing = [name for name in ENV_VARS if not env.get(name, "").strip()]
        if missing:
            raise ValueError(f"ZOHO_ACCOUNTS_URL is set, so set {', '.join(missing)} too")
        organizations = tuple(filter(None, map(str.strip, env["ZOHO_ORGANIZATION_IDS"].split(","))))
        return cls(
            accounts_url=accounts_url.rstrip("/"),
            client_id=env["ZOHO_CLIENT_ID"].strip(),
            client_secret=env["ZOHO_CLIENT_SECRET"].strip(),
            refresh_token=env["ZOHO_REFRESH_TOKEN"].strip(),
            organizations=organizations,
        )

    @classmethod
    def of_sandbox(cls, sandbox: Sandbox) -> ZohoAccount:
        return cls(
            accounts_url=sandbox.url,
            client_id=sandbox.client_id,
            client_secret=sandbox.client_secret,
            refresh_token=sandbox.refresh_token,
            organizations=tuple(sandbox.organizations),
            crm_ids={kind: list(sandbox.crm_ids.get(kind, ())) for kind in KINDS},
        )

    def secret(self) -> dict[str, str]:
        """The connection secret's JSON, as production stores it."""
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "refresh_token": self.refresh_token,
            "accounts_url": self.accounts_url,
        }
