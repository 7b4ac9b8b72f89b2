"""Shared by the CRM tests: what Zoho CRM's answers look like, written out independently of the
sandbox's code so a wrong shape there fails here."""

from __future__ import annotations

from typing import Any

ASCENDING = {"fields": "Account_Name", "sort_by": "Modified_Time", "sort_order": "asc"}


def crm_error(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The body of a Zoho CRM error."""
    return {"code": code, "details": details, "message": message, "status": "error"}
