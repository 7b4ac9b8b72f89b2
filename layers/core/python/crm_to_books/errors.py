"""Domain errors. Each carries a stable service code and the HTTP status it maps to.

Messages never contain secrets: tokens and client secrets are never put in an error.
"""

from __future__ import annotations


class ServiceError(Exception):
    """An error a caller sees: `{"code": code, "message": message}` with `http_status`."""

    code: int = 1000
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message}


class ConfigurationError(ServiceError):
    code = 1001
    http_status = 500


class InvalidRequest(ServiceError):
    """Bad input: the message names the field and the reason."""

    code = 1100
    http_status = 400

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class UnknownOrganization(ServiceError):
    code = 1101
    http_status = 403

    def __init__(self, organization_id: str) -> None:
        super().__init__(f"organization_id: {organization_id} is not configured for this service")
        self.organization_id = organization_id


class NotFound(ServiceError):
    code = 1104
    http_status = 404


class RateLimited(ServiceError):
    """No slot with Zoho right now; try again after `retry_after` seconds."""

    code = 1429
    http_status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConnectionBroken(ServiceError):
    """The connection's refresh token was refused by Zoho; imports are parked until fixed."""

    code = 1502
    http_status = 503

    def __init__(self, connection: str, reason: str) -> None:
        super().__init__(
            f"Zoho connection {connection!r} needs attention: {reason}. "
            f"Imports are parked; run `crm-to-books connect --connection {connection}`."
        )
        self.connection = connection
        self.reason = reason
