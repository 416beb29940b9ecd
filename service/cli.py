"""``dqe``: the command-line entry point.

Subcommands are discovered through the ``dqe.commands`` entry-point group (see ``pyproject.toml``); each
entry point names a ``register(subparsers)`` function. An entry point that declares an extra (``train =
"dqe.training.cli:register [train]"``) is loaded only when every requirement of that extra is installed, so a
serving-only install has no training commands and never imports :mod:`dqe.training`. Heavy imports
(onnxruntime, torch, grpc) happen inside the command functions, so ``dqe --help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence
from importlib import metadata

DISTRIBUTION = "dqe-service"
ENTRY_POINT_GROUP = "dqe.commands"
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([\w.-]+)["']""")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[([^\]]*)\])?")


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def extra_installed(extra: str, dist: str = DISTRIBUTION, _seen: frozenset[str] = frozenset()) -> bool:
    """Whether every requirement of ``dist[extra]`` is installed (self-references like ``dqe-service[export]``
    are followed). Only presence is checked; pip already resolved the versions."""
    if extra in _seen:
        return True
    for req in metadata.requires(dist) or ():
        spec, _, marker = req.partition(";")
        found = _EXTRA_MARKER.search(marker)
        if found is None or found.group(1) != extra:
            continue
        match = _NAME.match(spec)
        if match is None:
            continue
        name, inner = match.group(1), match.group(3)
        if name.replace("_", "-").lower() == dist:
            nested = [e.strip() for e in (inner or "").split(",") if e.strip()]
            if not all(extra_installed(e, dist, _seen | {extra}) for e in nested):
                return False
        elif not _installed(name):
            return False
    return True


def command_entry_points() -> list[metadata.EntryPoint]:
    """The ``dqe.commands`` entry points whose extras are installed, in declaration order."""
    return [
        ep
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
        if all(extra_installed(extra) for extra in ep.extras)
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dqe",
        description="Deep Quality Estimation: star ratings (1-6) for BraTS-style glioma segmentations.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in command_entry_points():
        ep.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
