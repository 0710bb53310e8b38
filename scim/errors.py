"""SCIM errors (RFC 7644 §3.12): one exception per ``scimType``, each carrying its HTTP status and ``to_error()``.

Plain Python; the blueprint turns any ``ScimError`` into an ``application/scim+json`` response.
"""

from __future__ import annotations

ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


class ScimError(Exception):
    status: int = 400
    scim_type: str | None = None
    default_detail: str = "The request could not be processed."

    def __init__(self, detail: str | None = None, *, headers: dict | None = None):
        self.detail = (detail or self.default_detail)[:500]
        self.headers = headers or {}
        super().__init__(self.detail)

    def to_error(self) -> dict:
        body: dict = {"schemas": [ERROR_SCHEMA], "status": str(self.status), "detail": self.detail}
        if self.scim_type:
            body["scimType"] = self.scim_type
        return body


# ---- 400 with a scimType ----------------------------------------------------------------------------
class InvalidFilter(ScimError):
    scim_type = "invalidFilter"
    default_detail = "The filter syntax is invalid or the filter names an unsupported attribute or operator."


class TooMany(ScimError):
    scim_type = "tooMany"
    default_detail = "The request would return too many results."


class Uniqueness(ScimError):
    status = 409
    scim_type = "uniqueness"
    default_detail = "One or more unique attribute values are already in use."


class Mutability(ScimError):
    scim_type = "mutability"
    default_detail = "The request tries to change an attribute that cannot be changed."


class InvalidSyntax(ScimError):
    scim_type = "invalidSyntax"
    default_detail = "The request body is not a valid SCIM message."


class InvalidPath(ScimError):
    scim_type = "invalidPath"
    default_detail = "The path attribute is invalid or malformed."


class NoTarget(ScimError):
    scim_type = "noTarget"
    default_detail = "The path did not match any attribute or value."


class InvalidValue(ScimError):
    scim_type = "invalidValue"
    default_detail = "A required value is missing or a value is not compatible with its attribute."


class InvalidVersion(ScimError):
    scim_type = "invalidVers"
    default_detail = "The SCIM protocol version is not supported."


class Sensitive(ScimError):
    status = 403
    scim_type = "sensitive"
    default_detail = "The request cannot be completed because of sensitive information in the URI."


# ---- other statuses (no scimType) -------------------------------------------------------------------
class Unauthorized(ScimError):
    status = 401
    default_detail = "Authorization with a valid bearer token is required."

    def __init__(self, detail: str | None = None):
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="scim"'})


class Forbidden(ScimError):
    status = 403
    default_detail = "This operation is not allowed."


class NotFound(ScimError):
    status = 404
    default_detail = "The resource does not exist."


class MethodNotAllowed(ScimError):
    status = 405
    default_detail = "This method is not supported on this endpoint."


class PreconditionFailed(ScimError):
    status = 412
    default_detail = "The resource has changed (its version does not match If-Match)."


class PayloadTooLarge(ScimError):
    status = 413
    default_detail = "The request body is too large."


class BulkTooMany(ScimError):
    """More bulk operations than ``maxOperations`` (RFC 7644 §3.7.4: 413)."""

    status = 413
    scim_type = "tooMany"
    default_detail = "The bulk request has more operations than maxOperations."


class CircularReference(ScimError):
    """``bulkId`` references that depend on each other (RFC 7644 §3.7.1)."""

    status = 409
    scim_type = "invalidSyntax"
    default_detail = "The bulk request has circular bulkId references."


class UnsupportedMediaType(ScimError):
    status = 415
    default_detail = "Send application/scim+json or application/json."


class NotImplementedScim(ScimError):
    status = 501
    default_detail = "This operation is not implemented."


class Unavailable(ScimError):
    status = 503
    default_detail = "The service is temporarily unavailable. Nothing was changed; try again later."


class InternalError(ScimError):
    status = 500
    default_detail = "An unexpected error occurred. Nothing was changed."
