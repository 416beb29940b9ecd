"""Server-side paths: which files a ``ScoreCase`` request may name (``--allowed-root`` folders), opened race-free.

A path is never resolved by name and then opened: each root is opened as a directory and the path is walked one
component at a time with ``openat(dir_fd, name, O_PATH | O_NOFOLLOW)``. A symlink met on the way is read
(``readlinkat``) and its target walked the same way, from the directory that holds it (relative) or from the
root it names (absolute; a target in no root is refused); ``..`` never climbs above the root. The file found is
reopened through its own descriptor and that descriptor is what gets read, so swapping a folder for a symlink
while a request is being served cannot make the server read outside the roots.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dqe.models.case import ALIASES, FIELDS, MODALITIES, classify_filename
from dqe.models.errors import DQEError, InvalidInput, NotFound, PermissionDenied
from dqe.service._proto import quality_estimation_pb2 as pb

MAX_SYMLINKS = 40  # as the kernel's own limit for one lookup
MAX_PATH_CHARS = 4096  # PATH_MAX
MAX_COMPONENT_BYTES = 255  # NAME_MAX
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_PATH = getattr(os, "O_PATH", 0)


def short(value: str, limit: int = 120) -> str:
    """``value`` cut to ``limit`` characters for messages and logs (the length is kept in the text)."""
    return value if len(value) <= limit else f"{value[:limit]}...[{len(value)} chars]"


@dataclass
class OpenedCase:
    """Read-only descriptors of a case's five files (close with :meth:`close`), and the default case id."""

    fds: dict[str, int]
    sources: dict[str, str]
    case_id: str
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for fd in self.fds.values():
                os.close(fd)

    def __enter__(self) -> OpenedCase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PathPolicy:
    """Confines server-side paths to configured roots.

    A path is refused (PERMISSION_DENIED) when it has a ``..`` component or when it, or a symlink on the way,
    leads outside all roots; relative paths are taken relative to the first root.
    """

    def __init__(self, roots: Sequence[str | os.PathLike[str]]) -> None:
        self.roots = tuple(Path(r).expanduser().resolve() for r in roots)

    @property
    def enabled(self) -> bool:
        return bool(self.roots)

    # ------------------------------------------------------------------ public
    def open_file(self, path: str, field: str) -> int:
        """A read-only descriptor of the regular file ``path`` names inside a root (the caller closes it).

        Raises:
            PermissionDenied: server paths disabled, a ``..`` component, outside the roots, no access.
            InvalidInput: empty, NUL byte, over 4096 characters or a component over 255 bytes, too many
                symlinks (a loop), not a regular file.
            NotFound: a component does not exist (also when removed while being opened).
        """
        fd = self._walk(path, field)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput(f"path {short(path)!r} is not a regular file", field=field)
            return _reopen(fd, os.O_RDONLY, path, field)
        finally:
            os.close(fd)

    def open_case(self, paths: pb.ServerPaths) -> OpenedCase:
        """Descriptors of the five files of a ``ServerPaths`` message and the default case id.

        Raises:
            PermissionDenied, InvalidInput, NotFound: see :meth:`open_file`; a folder with no or several files
                of one kind.
        """
        explicit = {f: getattr(paths, f) for f in FIELDS if getattr(paths, f)}
        chosen: dict[str, str] = {}
        case_id = ""
        if paths.case_dir:
            names = self._list_dir(paths.case_dir, "paths.case_dir")
            chosen = _discover(names, paths.case_dir, require_segmentation="segmentation" not in explicit)
            chosen = {k: f"{paths.case_dir.rstrip('/')}/{v}" for k, v in chosen.items()}
            case_id = PurePosixPath(paths.case_dir).name
        chosen.update(explicit)
        missing = [f for f in FIELDS if f not in chosen]
        if missing:
            raise InvalidInput(
                f"paths name no {missing[0]} file; give case_dir or all of {list(FIELDS)}",
                field=f"paths.{missing[0]}",
            )
        opened = OpenedCase(fds={}, sources={}, case_id=case_id)
        try:
            for name, p in chosen.items():
                opened.fds[name] = self.open_file(p, f"paths.{name}")
                opened.sources[name] = p
        except BaseException:
            opened.close()
            raise
        if not opened.case_id:
            opened.case_id = PurePosixPath(chosen["segmentation"]).name.split(".")[0]
        return opened

    # ------------------------------------------------------------------ walking
    def _list_dir(self, path: str, field: str) -> list[str]:
        fd = self._walk(path, field)
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise NotFound(f"case folder {short(path)!r} is not a folder", field=field)
            dfd = _reopen(fd, os.O_RDONLY | os.O_DIRECTORY, path, field)
        finally:
            os.close(fd)
        try:
            return sorted(os.listdir(dfd))
        finally:
            os.close(dfd)

    def _start(self, path: str, field: str) -> tuple[int, list[str]]:
        """The root a path starts from and its components below that root."""
        if not self.enabled:
            raise PermissionDenied(
                "server-side paths are disabled on this server (start it with --allowed-root DIR)",
                field=field,
            )
        if not path or "\x00" in path:
            raise InvalidInput(f"path {short(path)!r} is empty or contains a NUL byte", field=field)
        if len(path) > MAX_PATH_CHARS:
            raise InvalidInput(
                f"path {short(path)!r} is longer than {MAX_PATH_CHARS} characters", field=field
            )
        parts = PurePosixPath(path).parts
        if ".." in parts:
            raise PermissionDenied(
                f"path {short(path)!r} contains '..'; give a path inside the allowed roots", field=field
            )
        if not path.startswith("/"):
            return 0, list(parts)
        found = self._root_of(path)
        if found is None:
            # Not lexically under a root: it may reach one through a symlinked prefix (e.g. /var -> /private/var);
            # the walk below stays confined whatever that resolution said.
            found = self._root_of(os.path.realpath(path))
        if found is None:
            raise PermissionDenied(f"path {short(path)!r} is outside the allowed roots", field=field)
        return found

    def _root_of(self, path: str) -> tuple[int, list[str]] | None:
        parts = PurePosixPath(path).parts
        for index, root in enumerate(self.roots):
            rparts = root.parts
            if parts[: len(rparts)] == rparts:
                return index, list(parts[len(rparts) :])
        return None

    def _walk(self, path: str, field: str) -> int:
        """An ``O_PATH`` descriptor of what ``path`` names, walked without following symlinks out of a root."""
        index, todo = self._start(path, field)
        stack = [_open_root(self.roots[index], field)]
        links = 0
        try:
            while todo:
                comp = todo.pop(0)
                if comp in ("", ".", "/"):
                    continue
                if comp == "..":
                    if len(stack) == 1:
                        raise PermissionDenied(
                            f"path {short(path)!r} leads above its allowed root through a symlink",
                            field=field,
                        )
                    os.close(stack.pop())
                    continue
                if len(os.fsencode(comp)) > MAX_COMPONENT_BYTES:
                    raise InvalidInput(
                        f"path {short(path)!r} has a component of {len(comp)} characters; at most "
                        f"{MAX_COMPONENT_BYTES} bytes",
                        field=field,
                    )
                fd = _openat(comp, stack[-1], path, field)
                mode = os.fstat(fd).st_mode
                if stat.S_ISLNK(mode):
                    try:
                        target = _readlink_fd(fd, path, field)
                    finally:
                        os.close(fd)
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise InvalidInput(
                            f"path {short(path)!r} passes more than {MAX_SYMLINKS} symlinks (a loop?)",
                            field=field,
                        )
                    if target.startswith("/"):
                        found = self._root_of(target)
                        if found is None:
                            raise PermissionDenied(
                                f"path {short(path)!r} passes a symlink to {short(target)!r}, outside the "
                                "allowed roots",
                                field=field,
                            )
                        for d in stack:
                            os.close(d)
                        stack = [_open_root(self.roots[found[0]], field)]
                        todo = found[1] + todo
                    else:
                        todo = list(PurePosixPath(target).parts) + todo
                    continue
                if todo and not stat.S_ISDIR(mode):
                    os.close(fd)
                    raise NotFound(f"path {short(path)!r}: {short(comp)!r} is not a folder", field=field)
                stack.append(fd)
            return stack.pop()
        finally:
            for d in stack:
                os.close(d)


def _open_root(root: Path, field: str) -> int:
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    except OSError as exc:
        raise NotFound(f"allowed root {str(root)!r} cannot be opened ({exc.strerror})", field=field) from None


def _openat(name: str, dir_fd: int, path: str, field: str) -> int:
    try:
        return os.open(name, _O_PATH | os.O_NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise _os_error(exc, path, field) from None


def _readlink_fd(fd: int, path: str, field: str) -> str:
    """The target of the very symlink ``fd`` (``O_PATH | O_NOFOLLOW``) refers to (``readlinkat(fd, "")``)."""
    try:
        return os.readlink("", dir_fd=fd)
    except OSError as exc:
        raise _os_error(exc, path, field) from None


def _reopen(fd: int, flags: int, path: str, field: str) -> int:
    """A new descriptor with ``flags`` for the very inode ``fd`` (an ``O_PATH`` descriptor) refers to."""
    try:
        return os.open(f"/proc/self/fd/{fd}", flags | _CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise _os_error(exc, path, field) from None


def _os_error(exc: OSError, path: str, field: str) -> DQEError:
    """A client-facing error for a failed lookup (the message names the path, truncated)."""
    shown = short(path)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return NotFound(f"path {shown!r} does not exist", field=field)
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidInput(f"path {shown!r} has a name that is too long", field=field)
    if exc.errno == errno.ELOOP:
        return InvalidInput(f"path {shown!r} passes too many symlinks (a loop?)", field=field)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"path {shown!r} cannot be read by the server", field=field)
    return InvalidInput(f"path {shown!r} cannot be opened ({exc.strerror})", field=field)


def _discover(names: list[str], folder: str, require_segmentation: bool) -> dict[str, str]:
    """The file name for each case field among a folder's entries (BraTS naming, as ``discover_files``).

    Raises:
        NotFound: a kind has no file. InvalidInput: a kind matches several files.
    """
    found: dict[str, list[str]] = {f: [] for f in FIELDS}
    for name in names:
        kind = classify_filename(name)
        if kind is not None:
            found[kind].append(name)
    wanted = FIELDS if require_segmentation else MODALITIES
    result: dict[str, str] = {}
    for kind in wanted:
        hits = found[kind]
        if not hits:
            raise NotFound(
                f"case folder {short(folder)!r} has no {kind} file (looked for names ending in "
                f"{'/'.join(ALIASES[kind])} + .nii[.gz])",
                field=kind,
            )
        if len(hits) > 1:
            raise InvalidInput(
                f"case folder {short(folder)!r} has {len(hits)} {kind} files {hits[:5]}; name the one to use "
                "explicitly",
                field=kind,
            )
        result[kind] = hits[0]
    if not require_segmentation and len(found["segmentation"]) == 1:
        result["segmentation"] = found["segmentation"][0]
    return result
