"""The request every trigger is parsed into, and the ledger record every import ends in."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from crm_to_books.entities import KINDS
from crm_to_books.errors import InvalidRequest

ID_PATTERN = r"^[0-9]{1,19}$"
ZohoId = Annotated[str, Field(pattern=ID_PATTERN, description="decimal string, 1 to 19 digits")]


def canonical_id(value: str) -> str:
    """One form per Zoho id: `007` and `7` are the same record to Zoho (ids are numbers)."""
    return value.lstrip("0") or "0"


# schedule: a CRM sweep (or a user-declared schedule); crm: a Zoho CRM notification
Source = Literal["http", "sqs", "eventbridge", "schedule", "cli", "redrive", "crm"]


class Status(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ImportRequest(BaseModel):
    """One import asked for, whatever the trigger."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    organization_id: ZohoId
    crm_id: ZohoId
    source: Source = "http"
    correlation_id: str | None = Field(default=None, max_length=128)

    @field_validator("organization_id", "crm_id")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return canonical_id(value)

    @classmethod
    def parse(cls, **fields: Any) -> ImportRequest:
        """Validate `fields`; InvalidRequest names the first bad field and why."""
        kind = fields.get("kind")
        if kind not in KINDS:
            raise InvalidRequest("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
        for name in ("organization_id", "crm_id"):
            value = fields.get(name)
            if value is None or value == "":
                raise InvalidRequest(name, "is required")
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise InvalidRequest(name, "must be a string of 1 to 19 digits")
            if isinstance(value, int):
                # JSON numbers lose precision past 2**53 in most callers: accept only safe ones.
                if value < 0 or value > 2**53:
                    raise InvalidRequest(name, "must be sent as a string when over 2^53")
                fields[name] = str(value)
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "request"
            reason = (
                "must be a string of 1 to 19 digits"
                if err["type"] == "string_pattern_mismatch"
                else err["msg"]
            )
            raise InvalidRequest(field, reason) from None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.organization_id, self.kind, self.crm_id)


class ImportError_(BaseModel):
    """What went wrong on the last attempt, as Zoho or the service said it."""

    model_config = ConfigDict(extra="ignore")

    http_status: int | None = None
    zoho_code: int | None = None
    message: str
    category: str  # permanent, auth, rate_limited, unknown_outcome, connection_broken, invalid


class ImportRecord(BaseModel):
    """The ledger's record of one (organization, kind, CRM id)."""

    model_config = ConfigDict(extra="ignore")

    organization_id: str
    kind: str
    crm_id: str
    status: Status
    books_id: str | None = None
    attempts: int = 0
    created_at: str
    updated_at: str
    next_attempt_at: str | None = None
    sources: list[str] = Field(default_factory=list)
    correlation_ids: list[str] = Field(default_factory=list)
    last_error: ImportError_ | None = None
    detail: str | None = None  # a sentence: what happened and what the service does next
    parked: bool = False  # True: no queue message holds it; the re-drive job re-enqueues it
    in_dlq: bool = False
    # True: an earlier attempt's outcome is unknown (Zoho may have imported it); the record is
    # looked up in Books before anything is sent again.
    needs_lookup: bool = False

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)
