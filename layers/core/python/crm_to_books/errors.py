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


class ZohoRefused(ServiceError):
    """Zoho refused the import for good (a permanent 4xx): the ledger says failed, no retry."""

    code = 1422
    http_status = 422

    def __init__(
        self, zoho_message: str, zoho_code: int | None = None, zoho_http_status: int | None = None
    ) -> None:
        said = ", ".join(
            part
            for part in (
                f"Zoho code {zoho_code}" if zoho_code is not None else "",
                f"HTTP {zoho_http_status}" if zoho_http_status is not None else "",
            )
            if part
        )
        super().__init__(
            f"Zoho refused the import: {zoho_message.rstrip(' .')}{f' ({said})' if said else ''}. "
            "The import is recorded as failed and will not be retried."
        )
        self.zoho_code = zoho_code
        self.zoho_message = zoho_message

    def body(self) -> dict[str, object]:
        return {**super().body(), "zoho": {"code": self.zoho_code, "message": self.zoho_message}}


class RetryQueued(ServiceError):
    """Zoho could not complete the import now (down, unknown outcome, broken connection):
    the service keeps it and tries again after `retry_after` seconds."""

    code = 1503
    http_status = 503

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Deferred(ServiceError):
    """Accepted and kept, not done yet, for a reason of this service's own (the rate limiter,
    the settle time after an unknown outcome): tried again after `retry_after` seconds."""

    code = 1202
    http_status = 202

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InProgress(Deferred):
    """Another request's attempt holds the record and did not finish while this one waited."""

    code = 1203


class Unauthenticated(ServiceError):
    """A request that must prove who sent it carried no proof (a notification without token)."""

    code = 1401
    http_status = 401


class Forbidden(ServiceError):
    """The proof does not hold (a wrong token, or a channel we do not know: the same answer)."""

    code = 1403
    http_status = 403


class PayloadTooLarge(ServiceError):
    code = 1413
    http_status = 413


class QueueUnavailable(ServiceError):
    """Imports could not be queued now; nothing was lost that a sweep cannot find again."""

    code = 1504
    http_status = 503
