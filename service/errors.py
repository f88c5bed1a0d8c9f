"""The error family: every refusal slotlog answers with, and its HTTP status and code (SPEC §3).

Domain rules raise these from the pure core, so this module imports nothing with I/O; the HTTP
layer renders any of them as `{"error": {"code", "message", "details"}}`.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class MalformedJson(ApiError):
    status, code = 400, "malformed_json"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"


class SlotUnavailable(ApiError):
    status, code = 409, "slot_unavailable"


class NotEnoughSeats(ApiError):
    status, code = 409, "not_enough_seats"


class HoldExpiredError(ApiError):
    status, code = 409, "hold_expired"


class InvalidTransition(ApiError):
    status, code = 409, "invalid_transition"


class CancelWindowClosed(ApiError):
    status, code = 409, "cancel_window_closed"


class OutsideBookingWindow(ApiError):
    status, code = 409, "outside_booking_window"


class Conflict(ApiError):
    """A generic 409 for conflicts without a more specific code (e.g. a session clash)."""

    status, code = 409, "conflict"


class VersionMismatch(ApiError):
    status, code = 412, "version_mismatch"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class IdempotencyKeyReused(ApiError):
    status, code = 422, "idempotency_key_reused"


class ValidationFailed(ApiError):
    status, code = 422, "validation_error"

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        first = "; ".join(f"{p}: {m}" if p else m for p, m in errors[:3])
        super().__init__(
            f"invalid request: {first}",
            errors=[{"path": p, "message": m} for p, m in errors],
        )


class Unavailable(ApiError):
    status, code = 503, "unavailable"
