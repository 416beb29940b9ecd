"""Server-side paths: which files a ``ScoreCase`` request may name (``--allowed-root`` folders)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from dqe.models.case import FIELDS, discover_files
from dqe.models.errors import InvalidInput, NotFound, PermissionDenied
from dqe.service._proto import quality_estimation_pb2 as pb


class PathPolicy:
    """Confines server-side paths to configured roots.

    A path is refused (PERMISSION_DENIED) when it has a ``..`` component or when, after every symlink is
    resolved, it lies outside all roots; the check runs before existence is looked at, so callers cannot
    probe for files outside the roots. Relative paths are taken relative to the first root.
    """

    def __init__(self, roots: Sequence[str | os.PathLike[str]]) -> None:
        self.roots = tuple(Path(r).expanduser().resolve() for r in roots)

    @property
    def enabled(self) -> bool:
        return bool(self.roots)

    def resolve(self, path: str, field: str) -> Path:
        """The real path of ``path`` inside a root.

        Raises:
            PermissionDenied: server paths disabled, a ``..`` component, or outside the roots.
            InvalidInput: an empty path or one with a NUL byte.
        """
        if not self.enabled:
            raise PermissionDenied(
                "server-side paths are disabled on this server (start it with --allowed-root DIR)",
                field=field,
            )
        if not path or "\x00" in path:
            raise InvalidInput(f"path {path!r} is empty or contains a NUL byte", field=field)
        candidate = Path(path)
        if ".." in candidate.parts:
            raise PermissionDenied(
                f"path {path!r} contains '..'; give a path inside the allowed roots", field=field
            )
        if not candidate.is_absolute():
            candidate = self.roots[0] / candidate
        real = candidate.resolve()
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            raise PermissionDenied(
                f"path {path!r} resolves outside the allowed roots (symlinks are followed)", field=field
            )
        return real

    def case_files(self, paths: pb.ServerPaths) -> tuple[dict[str, Path], str]:
        """The five confined files of a ``ServerPaths`` message and the default case id.

        Raises:
            PermissionDenied, InvalidInput: see :meth:`resolve`.
            NotFound: the folder or a file does not exist.
        """
        explicit = {f: getattr(paths, f) for f in FIELDS if getattr(paths, f)}
        files: dict[str, Path] = {}
        case_id = ""
        if paths.case_dir:
            folder = self.resolve(paths.case_dir, "paths.case_dir")
            found = discover_files(folder, require_segmentation="segmentation" not in explicit)
            # Files inside the folder may themselves be symlinks that leave the roots.
            files = {k: self.resolve(str(v), f"paths.{k}") for k, v in found.items()}
            case_id = Path(paths.case_dir).name
        for name, value in explicit.items():
            files[name] = self.resolve(value, f"paths.{name}")
        missing = [f for f in FIELDS if f not in files]
        if missing:
            raise InvalidInput(
                f"paths name no {missing[0]} file; give case_dir or all of {list(FIELDS)}",
                field=f"paths.{missing[0]}",
            )
        for name, p in files.items():
            if not p.is_file():
                raise NotFound(f"{name}: file {str(p)!r} does not exist", field=f"paths.{name}")
        if not case_id:
            case_id = files["segmentation"].name.split(".")[0]
        return files, case_id
