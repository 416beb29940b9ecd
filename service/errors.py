"""The error hierarchy as seen by the service (defined in :mod:`dqe.models.errors`, re-exported here)."""

from dqe.models.errors import (
    DQEError,
    EmptySegmentation,
    IntegrityError,
    InvalidInput,
    ModelNotReady,
    NotFound,
    Overloaded,
    PermissionDenied,
    Unauthenticated,
    UnreadableFile,
    UnsupportedMode,
)

__all__ = [
    "DQEError",
    "EmptySegmentation",
    "IntegrityError",
    "InvalidInput",
    "ModelNotReady",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "Unauthenticated",
    "UnreadableFile",
    "UnsupportedMode",
]
