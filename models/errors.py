"""The domain error hierarchy, shared by the model code and the service.

Each error carries the name of the gRPC status code it maps to (as a string, so this module never imports
grpc); the service maps them in one interceptor. Messages name the field and the value found.
"""

from __future__ import annotations


class DQEError(Exception):
    """Base class of every error the product raises on purpose."""

    code: str = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message

    @property
    def kind(self) -> str:
        return type(self).__name__


class InvalidInput(DQEError):
    """The request or case is malformed (maps to INVALID_ARGUMENT)."""

    code = "INVALID_ARGUMENT"


class UnreadableFile(InvalidInput):
    """A file is truncated, not NIfTI, or not decodable."""


class EmptySegmentation(InvalidInput):
    """The segmentation has no tumour label, so there is no centre of mass to slice through."""


class NotFound(DQEError):
    """A file, case or model that was named does not exist (maps to NOT_FOUND)."""

    code = "NOT_FOUND"


class PermissionDenied(DQEError):
    """A path outside the allowed roots, or a missing/wrong credential (maps to PERMISSION_DENIED)."""

    code = "PERMISSION_DENIED"


class Unauthenticated(DQEError):
    """No or wrong bearer token (maps to UNAUTHENTICATED)."""

    code = "UNAUTHENTICATED"


class ModelNotReady(DQEError):
    """The model is not built or not loaded yet (maps to UNAVAILABLE)."""

    code = "UNAVAILABLE"


class Overloaded(DQEError):
    """The request queue is full (maps to RESOURCE_EXHAUSTED)."""

    code = "RESOURCE_EXHAUSTED"


class UnsupportedMode(DQEError):
    """A precision or provider was asked for that this machine cannot run (maps to FAILED_PRECONDITION)."""

    code = "FAILED_PRECONDITION"


class IntegrityError(DQEError):
    """A weights or model file does not match its recorded checksum (maps to FAILED_PRECONDITION)."""

    code = "FAILED_PRECONDITION"


class DeadlineExpired(DQEError):
    """The call's deadline passed before its work ran (maps to DEADLINE_EXCEEDED)."""

    code = "DEADLINE_EXCEEDED"


class CallCancelled(DQEError):
    """The caller went away before its work ran (maps to CANCELLED)."""

    code = "CANCELLED"
