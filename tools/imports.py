"""Import structure of the ``dqe`` package: the package dependency graph and the list of lazy imports.

``python tools/imports.py graph``  prints the package-level dependency graph (grimp, the library behind
import-linter), each edge labelled down/same/UP by layer; exit 1 if an edge points up.
``python tools/imports.py lazy``   prints every internal import made inside a function (not at module top
level, TYPE_CHECKING blocks excluded), with the reason given on the import's line (``# lazy: ...``); exit 1 if
one has no reason.
``python tools/imports.py readme`` rewrites the README blocks between ``<!-- imports:graph -->`` and
``<!-- imports:lazy -->`` markers from the two listings (``make imports`` runs it).
Needs the package installed (strict editable install, as ``make venv`` does).
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"models": "dqe.models", "service": "dqe.service", "training": "dqe.training"}
# Layers, top to bottom; a package's layer is its first matching prefix.
LAYERS = (
    # entry points: the CLI and its command plugins (training registers its commands through dqe.training.cli)
    (
        "cli",
        (
            "dqe.service.cli",
            "dqe.service.commands",
            "dqe.service.demo",
            "dqe.service.healthcheck",
            "dqe.training.cli",
        ),
    ),
    ("training", ("dqe.training",)),
    ("runtime", ("dqe.service",)),
    ("core", ("dqe.models",)),
)
GROUPS = (
    "dqe.models.qc",
    "dqe.models",
    "dqe.service.commands",
    "dqe.service.serving",
    "dqe.service.batch",
    "dqe.service.backends",
    "dqe.service._proto",
    "dqe.service",
    "dqe.training.transforms",
    "dqe.training",
)
LAZY_REASON = re.compile(r"#\s*lazy:\s*(.+)$")


def layer_of(module: str) -> int:
    for rank, (_name, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return len(LAYERS)


def group_of(module: str) -> str:
    """Packages stand for their modules; the core and training are shown as wholes (plus qc, cli)."""
    if module.startswith("dqe.training.cli"):
        return "dqe.training.cli"
    for g in GROUPS:
        if module == g or module.startswith(g + "."):
            if g == "dqe.service":
                return ".".join(module.split(".")[:3])
            return g
    return module


def package_graph() -> dict[tuple[str, str], int]:
    """``{(importer group, imported group): number of module-level edges}`` between different groups."""
    import grimp

    graph = grimp.build_graph("dqe.models", "dqe.service", "dqe.training")
    edges: dict[tuple[str, str], int] = defaultdict(int)
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = group_of(importer), group_of(imported)
            if a != b:
                edges[(a, b)] += 1
    return dict(edges)


def graph_lines() -> tuple[list[str], int]:
    edges = package_graph()
    lines, upward = [], 0
    for (a, b), n in sorted(edges.items(), key=lambda e: (layer_of(e[0][0]), e[0])):
        la, lb = layer_of(a), layer_of(b)
        tag = "down" if lb > la else "same" if lb == la else "UP"
        upward += tag == "UP"
        lines.append(f"{LAYERS[la][0]:>8} {a:<34} -> {b:<34} {tag:<4} ({n})")
    return lines, upward


def lazy_imports() -> list[tuple[str, str, str]]:
    """``(file, imported module, reason)`` of every dqe import inside a function (no line numbers, so the README
    listing only goes stale when a lazy import is added, removed or re-explained)."""
    found = []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "_proto" in path.parts:
                continue
            source = path.read_text()
            lines = source.splitlines()
            tree = ast.parse(source)
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("dqe."):
                        names = [inner.module or ""]
                    elif isinstance(inner, ast.Import):
                        names = [a.name for a in inner.names if a.name.startswith("dqe.")]
                    else:
                        continue
                    for name in names:
                        match = LAZY_REASON.search(lines[inner.lineno - 1])
                        rel = str(path.relative_to(REPO))
                        found.append((rel, name, match.group(1).strip() if match else ""))
    return sorted(set(found))


def lazy_lines() -> tuple[list[str], int]:
    rows = lazy_imports()
    missing = sum(1 for r in rows if not r[2])
    return [f"{f}  {m}  -- {why or 'NO REASON GIVEN'}" for f, m, why in rows], missing


def _replace_block(text: str, name: str, body: list[str]) -> str:
    start, end = f"<!-- imports:{name} -->", f"<!-- /imports:{name} -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    block = start + "\n```\n" + "\n".join(body) + "\n```\n" + end
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {start} ... {end} block")
    return pattern.sub(lambda _m: block, text)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "graph"
    if command == "graph":
        lines, upward = graph_lines()
        print("\n".join(lines))
        print(f"{len(lines)} package edges, {upward} pointing up")
        return 1 if upward else 0
    if command == "lazy":
        lines, missing = lazy_lines()
        print("\n".join(lines))
        print(f"{len(lines)} lazy internal imports, {missing} without a reason")
        return 1 if missing else 0
    if command == "readme":
        readme = REPO / "README.md"
        g, upward = graph_lines()
        lz, missing = lazy_lines()
        text = _replace_block(readme.read_text(), "graph", g)
        readme.write_text(_replace_block(text, "lazy", lz))
        return 1 if upward or missing else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
