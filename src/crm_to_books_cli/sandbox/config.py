"""What the sandbox seeds and how it behaves: validated, so a typo in a knob fails loudly.

The sandbox keeps its own table of kinds instead of importing the runtime library's: it stands in
for Zoho, so a mistake in the library must not be mirrored here and pass unnoticed.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crm_to_books_cli.sandbox.crm_config import CrmSettings

Kind = Literal["account", "contact", "vendor", "item"]
KINDS: tuple[Kind, ...] = ("account", "contact", "vendor", "item")
CRM_MODULES: dict[str, str] = {
    "account": "Accounts",
    "contact": "Contacts",
    "vendor": "Vendors",
    "item": "Products",
}

SyncMode = Literal["accounts_only", "accounts_and_contacts", "contacts_only", "vendors", "products"]
# Zoho Books' CRM sync modes and the imports each allows (Zoho's "ZOHO CRM Integration" API docs).
SYNC_MODES: dict[str, frozenset[str]] = {
    "accounts_only": frozenset({"account"}),
    "accounts_and_contacts": frozenset({"account", "contact"}),
    "contacts_only": frozenset({"contact"}),
    "vendors": frozenset({"vendor"}),
    "products": frozenset({"item"}),
}
_CUSTOMER_MODES = frozenset({"accounts_only", "accounts_and_contacts", "contacts_only"})

# Seeded CRM records: ids shaped like real CRM ids (19 digits), with a name for look-ups.
SEEDED_CRM_RECORDS: dict[str, dict[str, str]] = {
    "account": {
        "3652397000000100001": "Zylker Inc.",
        "3652397000000100002": "Bowman Furniture",
        "3652397000000100003": "Acme Trading",
    },
    "contact": {
        "3652397000000200001": "Patricia Boyle",
        "3652397000000200002": "Rajesh Kumar",
        "3652397000000200003": "Ana Souza",
    },
    "vendor": {
        "3652397000000300001": "Northwind Supplies",
        "3652397000000300002": "Contoso Parts",
        "3652397000000300003": "Fabrikam Logistics",
    },
    "item": {
        "3652397000000400001": "Standing Desk",
        "3652397000000400002": "Ergonomic Chair",
        "3652397000000400003": "Support Plan (1 year)",
    },
}
MISSING_CRM_ID = "3652397000000999999"
# The seeded connection's scopes: Books, and what the CRM triggers read and watch.
SEEDED_SCOPE = ",".join(
    [
        "ZohoBooks.fullaccess.all",
        *(f"ZohoCRM.modules.{module.lower()}.READ" for module in CRM_MODULES.values()),
        "ZohoCRM.notifications.ALL",
    ]
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def with_changes(self, **changes: Any) -> Self:
        """A validated copy with `changes` applied (pydantic's `model_copy` does not validate)."""
        return self.model_validate({**self.model_dump(), **changes})


class Organization(_Model):
    organization_id: str = Field(pattern=r"^[0-9]{1,19}$")
    name: str
    sync_modes: tuple[SyncMode, ...]
    requests_per_minute: int = Field(100, ge=1)
    daily_limit: int = Field(1000, ge=1)  # Zoho's Free plan
    max_concurrency: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _one_customer_mode(self) -> Organization:
        if len(_CUSTOMER_MODES.intersection(self.sync_modes)) > 1:
            raise ValueError("an organization syncs customers in one mode only")
        return self

    def allows(self, kind: str) -> bool:
        return any(kind in SYNC_MODES[mode] for mode in self.sync_modes)


DEFAULT_ORGANIZATIONS: tuple[Organization, ...] = (
    Organization(
        organization_id="700100200",
        name="Sandbox Trading (every sync mode)",
        sync_modes=("accounts_and_contacts", "vendors", "products"),
    ),
    Organization(
        organization_id="700100201",
        name="Sandbox Services (accounts only)",
        sync_modes=("accounts_only",),
    ),
)


class Faults(_Model):
    """Failures to inject. `*_next` counts are exact; `*_rate` draws from a seeded generator."""

    seed: int = 0
    scope: Literal["books", "imports"] = "books"  # which Books requests the faults hit
    kind: Kind | None = None  # only requests for this kind (imports, or look-ups by its CRM id)
    crm_id: str | None = None  # only imports of this CRM id (a batch's records run at once)
    latency_seconds: float = Field(0.0, ge=0)
    latency_jitter_seconds: float = Field(0.0, ge=0)
    fail_5xx_next: int = Field(0, ge=0)
    fail_5xx_rate: float = Field(0.0, ge=0, le=1)
    fail_5xx_status: Literal[500, 502, 503, 504] = 500
    fail_5xx_after_commit: bool = False  # the import takes effect, then the 5xx is sent
    reset_before_next: int = Field(0, ge=0)
    reset_before_rate: float = Field(0.0, ge=0, le=1)
    hang_after_commit_next: int = Field(0, ge=0)
    hang_after_commit_rate: float = Field(0.0, ge=0, le=1)
    hang_seconds: float = Field(30.0, ge=0)  # 0 drops the connection instead
    drop_after_commit: bool = False
    token_fail_next: int = Field(0, ge=0)
    token_fail_rate: float = Field(0.0, ge=0, le=1)
    # How the token endpoint fails: a 5xx (`fail_5xx_status`), an edge's HTML 403 or 429 page,
    # or an `error` Zoho has not documented (HTTP 400 JSON).
    token_fail_answer: Literal["5xx", "html_403", "html_429", "unknown_error"] = "5xx"  # noqa: S105
    token_latency_seconds: float = Field(0.0, ge=0)
    # An import Zoho commits late: the client's read times out first, the record appears
    # `commit_late_seconds` after the request arrived, and the connection is then dropped.
    commit_late_next: int = Field(0, ge=0)
    commit_late_rate: float = Field(0.0, ge=0, le=1)
    commit_late_seconds: float = Field(30.0, ge=0)


class SandboxConfig(_Model):
    # Seeded self-client: sandbox credentials, not anyone's secrets.
    client_id: str = "1000.SANDBOXCLIENT0000000000000000"
    client_secret: str = "5a4db0c1e2f3sandbox0client0secret0000000"  # noqa: S105
    refresh_token: str = "1000.5a4db0c1e2f3a4b5c6d7e8f9a0b1c2d3.sandbox0seeded0refresh00"  # noqa: S105
    refresh_token_scope: str = SEEDED_SCOPE

    token_lifetime_seconds: int = Field(3600, ge=1)
    token_requests_per_window: int = Field(10, ge=1)
    token_window_seconds: float = Field(600.0, gt=0)
    max_active_tokens: int = Field(20, ge=1)
    grant_code_lifetime_seconds: float = Field(180.0, gt=0)

    organizations: tuple[Organization, ...] = DEFAULT_ORGANIZATIONS
    rate_window_seconds: float = Field(60.0, gt=0)
    day_seconds: float = Field(86400.0, gt=0)

    reimport: Literal["return_existing", "error", "duplicate"] = "return_existing"
    contact_result_key: Literal["contact_id", "customer_id"] = "contact_id"
    import_status: Literal[200, 201] = 200
    auto_create_crm_records: bool = False  # True: any well-formed id imports (benchmarks)
    missing_crm_ids: frozenset[str] = frozenset()
    # How list look-ups by CRM id may misbehave (each seen in some Books API): the filter
    # ignored (every record listed, a page at a time), rows without their zcrm_* fields, or
    # the filter refused (HTTP 400 code 2, or 404).
    lookup_ignores_filter: bool = False
    lookup_rows_without_crm_id: bool = False
    lookup_refuses: Literal[400, 404] | None = None
    crm: CrmSettings = CrmSettings()

    faults: Faults = Faults()
    log_requests: bool = False

    @model_validator(mode="after")
    def _unique_organizations(self) -> SandboxConfig:
        ids = [org.organization_id for org in self.organizations]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError("organizations must be a non-empty list with unique ids")
        return self


# What `configure` may change on a running sandbox: behaviour, not seeds or credentials.
RUNTIME_SETTINGS = frozenset(
    {
        "token_lifetime_seconds",
        "token_requests_per_window",
        "token_window_seconds",
        "max_active_tokens",
        "grant_code_lifetime_seconds",
        "rate_window_seconds",
        "day_seconds",
        "reimport",
        "contact_result_key",
        "import_status",
        "auto_create_crm_records",
        "missing_crm_ids",
        "lookup_ignores_filter",
        "lookup_rows_without_crm_id",
        "lookup_refuses",
        "log_requests",
    }
)
