"""The error hierarchy as seen by the service (defined in :mod:`models.errors`, re-exported here)."""

from models.errors import (
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
