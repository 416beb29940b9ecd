"""One exam from ``.nii.gz`` to stars, warm, and the network alone on its three views (child process).

Started by ``benchmarks/run.py`` once per side:

* ``reference``: ``deep_quality_estimation.DQE(device="cpu").predict(t1c=Path, ...)``; model only = its three
  batch-1 forwards (as its DataLoader runs them) under ``torch.no_grad``;
* ``ours``: ``Engine(mode).score_case(Case.from_files(...))`` for every requested mode; model only =
  ``Engine.run`` on the ``(3, 7, H, W)`` views.

Both sides first score every case once (warm-up: model loaded, code paths and page cache warm), then take
``repeats`` samples per case, cases interleaved (and our modes interleaved) so that a burst of load from other
processes hits everything alike. The model-only input is the first case's views, built with our preprocessing,
which is bit-identical to the reference's (``tests/test_parity.py``).

Output (last stdout line): ``{"exam_ms": {mode: [samples]}, "model_ms": {mode: [samples]},
"stars": {mode: {case: [axial, coronal, sagittal]}}, "load_ms": {mode: ms}}``; times in milliseconds.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.proc import emit, read_spec

logger = logging.getLogger(__name__)

FIELDS = ("t1c", "t1", "t2", "flair", "segmentation")
VIEWS = ("axial", "coronal", "sagittal")
Scorer = Callable[[dict[str, Path]], list[float]]


def _ms(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def first_views(files: dict[str, Path]) -> Any:
    """``(3, 7, H, W)`` float32 views of one case, with our (reference-identical) preprocessing."""
    import numpy as np

    from dqe.models.case import Case
    from dqe.models.contract import CONTRACT_V1
    from dqe.models.preprocess import build_views

    case = Case.from_files(**files)  # type: ignore[arg-type]
    views, _ = build_views(case.images, case.labels, CONTRACT_V1)
    return np.stack(views)


def reference_scorers() -> tuple[dict[str, Scorer], dict[str, Callable[[Any], None]], dict[str, float]]:
    """The reference package's ``predict`` and its network's three batch-1 forwards."""
    import torch
    from deep_quality_estimation import DQE

    t0 = time.perf_counter()
    model = DQE(device="cpu")
    load_ms = (time.perf_counter() - t0) * 1e3
    net = model.model.eval()

    def score(files: dict[str, Path]) -> list[float]:
        _, per_view = model.predict(**{k: files[k] for k in FIELDS})
        by_name = {str(getattr(k, "name", k)).lower().split(".")[-1]: float(v) for k, v in per_view.items()}
        return [by_name[v] for v in VIEWS]

    def forward3(views: Any) -> None:
        x = torch.from_numpy(views)
        with torch.no_grad():
            for i in range(x.shape[0]):  # the reference's DataLoader runs one view per batch
                net(x[i : i + 1])

    return {"reference": score}, {"reference": forward3}, {"reference": load_ms}


def our_scorers(
    modes: list[str], threads: int
) -> tuple[dict[str, Scorer], dict[str, Callable[[Any], None]], dict[str, float]]:
    """One engine per mode; raises ``UnsupportedMode`` for a mode this machine lacks."""
    import dataclasses

    from dqe.models.case import Case
    from dqe.service.backends import mode_config
    from dqe.service.engine import Engine, EngineConfig

    scorers: dict[str, Scorer] = {}
    models: dict[str, Callable[[Any], None]] = {}
    load_ms: dict[str, float] = {}
    for mode in modes:
        precision, backend = mode_config(mode)
        config = dataclasses.replace(
            EngineConfig(intra_op_threads=threads), precision=precision, backend=backend
        )
        t0 = time.perf_counter()
        engine = Engine(config)
        load_ms[mode] = (time.perf_counter() - t0) * 1e3

        def score(files: dict[str, Path], e: Engine = engine) -> list[float]:
            result = e.score_case(Case.from_files(**files))  # type: ignore[arg-type]
            return [float(result.views[v]) for v in VIEWS]

        def run(views: Any, e: Engine = engine) -> None:
            e.run(views)

        scorers[mode], models[mode] = score, run
    return scorers, models, load_ms


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm-up, then ``spec["repeats"]`` interleaved samples per case and mode (see the module docstring)."""
    cases = [(name, {k: Path(v) for k, v in files.items()}) for name, files in spec["cases"]]
    repeats = int(spec["repeats"])
    if spec["side"] == "reference":
        scorers, models, load_ms = reference_scorers()
    else:
        scorers, models, load_ms = our_scorers(list(spec["modes"]), int(spec.get("threads", 0)))
    views = first_views(cases[0][1])
    stars: dict[str, dict[str, list[float]]] = {m: {} for m in scorers}
    for name, files in cases:  # warm-up pass
        for mode, score in scorers.items():
            stars[mode][name] = score(files)
    for run in models.values():
        run(views)
    exam_ms: dict[str, list[float]] = {m: [] for m in scorers}
    model_ms: dict[str, list[float]] = {m: [] for m in scorers}
    for _ in range(repeats):
        for _name, files in cases:
            for mode, score in scorers.items():
                exam_ms[mode].append(_ms(lambda s=score, f=files: s(f)))  # type: ignore[misc]
        for mode, run in models.items():
            model_ms[mode].append(_ms(lambda r=run: r(views)))  # type: ignore[misc]
    return {
        "exam_ms": exam_ms,
        "model_ms": model_ms,
        "stars": stars,
        "load_ms": load_ms,
        "views_shape": list(views.shape),
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    emit(measure(read_spec(sys.argv)))
