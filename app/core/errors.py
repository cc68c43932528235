"""The one error hierarchy. Raise a subclass of `ApiException` anywhere; never build an error
response by hand: `app.api.errors` renders every one in the contract's envelope (whose error
body the contract calls `ApiError`, `app.api.envelope`)."""

from __future__ import annotations

from typing import Any, ClassVar

RETRY_AFTER_SECONDS = 5


class ApiException(Exception):
    status_code: int = 500
    code: str = "INTERNAL_ERROR"
    default_message: ClassVar[str] = "The server could not complete the request."
    retry_after: ClassVar[int | None] = None

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(self.retry_after)}


class Unauthorized(ApiException):
    status_code = 401
    code = "UNAUTHORIZED"
    default_message = "Missing or invalid credentials."

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class ValidationFailed(ApiException):
    status_code = 422
    code = "VALIDATION_ERROR"
    default_message = "The request is not valid."


class RateLimited(ApiException):
    status_code = 429
    code = "RATE_LIMITED"
    default_message = "Too many requests for this credential; slow down."

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.wait = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.wait)}


class RouteNotFound(ApiException):
    status_code = 404
    code = "NOT_FOUND"
    default_message = "No such route."


class MethodNotAllowed(ApiException):
    status_code = 405
    code = "METHOD_NOT_ALLOWED"
    default_message = "This method is not allowed on this route."


class ExportNotFound(ApiException):
    status_code = 404
    code = "EXPORT_NOT_FOUND"
    default_message = "Export not found."


class ExportExpired(ApiException):
    status_code = 404
    code = "EXPORT_EXPIRED"
    default_message = "This export has expired and its file is no longer available."


class ExportNotReady(ApiException):
    status_code = 409
    code = "EXPORT_NOT_READY"
    default_message = "This export is still being generated; try again shortly."


class ExportFailed(ApiException):
    status_code = 409
    code = "EXPORT_FAILED"
    default_message = "This export failed and has no file to download."


class StorageNotConfigured(ApiException):
    status_code = 503
    code = "STORAGE_NOT_CONFIGURED"
    default_message = "Export storage (Backblaze B2) is not configured on this server."


class StorageUnavailable(ApiException):
    status_code = 503
    code = "STORAGE_UNAVAILABLE"
    default_message = "Export storage is unavailable; try again shortly."

    def __init__(self, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__()
        # When B2 will be tried again (the circuit breaker's, or what B2 asked for).
        self.wait = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.wait)}


class StorageError(ApiException):
    status_code = 502
    code = "STORAGE_ERROR"
    default_message = (
        "Export storage refused to sign this export's file; the export cannot be downloaded."
    )


class Overloaded(ApiException):
    status_code = 503
    code = "SERVER_OVERLOADED"
    default_message = "The server is handling too many requests; try again shortly."
    retry_after = 1


class HeadersTooLarge(ApiException):
    status_code = 431
    code = "HEADERS_TOO_LARGE"
    default_message = "The request's headers are too large."


class DatabaseUnavailable(ApiException):
    status_code = 503
    code = "DATABASE_UNAVAILABLE"
    default_message = "The database is unavailable; try again shortly."
    retry_after = RETRY_AFTER_SECONDS


class NotReady(ApiException):
    status_code = 503
    code = "NOT_READY"
    default_message = "The service is not ready to serve requests."
    retry_after = RETRY_AFTER_SECONDS


class CorsRejected(ApiException):
    status_code = 403
    code = "CORS_REJECTED"
    default_message = "This cross-origin request is not allowed."
