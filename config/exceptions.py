"""Errors services raise. The API turns them into the SPEC §4 error shape; the admin and
commands show their message. Services never import DRF."""

from __future__ import annotations


class AirlockError(Exception):
    status_code = 400
    default_code = "invalid"

    def __init__(self, detail: str, *, code: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code


class InvalidInput(AirlockError):
    pass


class PermissionDenied(AirlockError):
    status_code = 403
    default_code = "permission_denied"


class NotFound(AirlockError):
    status_code = 404
    default_code = "not_found"


class Conflict(AirlockError):
    status_code = 409
    default_code = "conflict"


class TooLarge(AirlockError):
    status_code = 413
    default_code = "too_large"


class LimitExceeded(AirlockError):
    status_code = 429
    default_code = "limit_exceeded"

    def __init__(self, detail: str, *, retry_after_s: int, code: str | None = None):
        super().__init__(detail, code=code)
        self.retry_after_s = retry_after_s


class ServiceUnavailable(AirlockError):
    status_code = 503
    default_code = "backend_unavailable"
