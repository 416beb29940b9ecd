"""Time the QC gate adds to a score, next to the score itself (child process).

For every case (loaded once as a :class:`dqe.models.case.Case`; exams that share images decode them once),
after one warm-up, ``repeats`` rounds over the cases time

* ``score_ms``: ``Engine.score_case(case)`` (fp32 ONNX Runtime; validation is already done, so this is centre of
  mass, slicing, preprocessing and the network);
* ``gate_ms``: ``dqe.models.qc.gate.evaluate_case(case, result)`` (the 3-D plausibility checks and verdict),

both as wall-clock samples in ms, the same statistic for both, and ``gate_cpu_ms``: the gate's process CPU time
(less sensitive than wall time to other processes on a shared machine; the gate is single-threaded numpy).
The gate never reruns the network.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.proc import emit, read_spec

logger = logging.getLogger(__name__)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    from dqe.models.case import Case
    from dqe.models.qc.gate import evaluate_case
    from dqe.service.engine import Engine, EngineConfig

    engine = Engine(EngineConfig(intra_op_threads=int(spec.get("threads", 0))))
    cases: list[tuple[str, Case]] = []
    shared: dict[str, Any] = {}
    for name, files in spec["cases"]:
        paths = {k: Path(v) for k, v in files.items()}
        case = Case.from_files(**paths, case_id=name, images=shared.get(str(paths["t1c"])))  # type: ignore[arg-type]
        shared.setdefault(
            str(paths["t1c"]), dict(zip(("t1c", "t1", "t2", "flair"), case.images, strict=True))
        )
        cases.append((name, case))
    verdicts = {}
    for name, case in cases:  # warm-up
        verdicts[name] = evaluate_case(case, engine.score_case(case)).verdict.value
    score_ms: list[float] = []
    gate_ms: list[float] = []
    gate_cpu_ms: list[float] = []
    for _ in range(int(spec["repeats"])):
        for _name, case in cases:
            t0 = time.perf_counter()
            result = engine.score_case(case)
            t1, c1 = time.perf_counter(), time.process_time()
            evaluate_case(case, result)
            t2, c2 = time.perf_counter(), time.process_time()
            score_ms.append((t1 - t0) * 1e3)
            gate_ms.append((t2 - t1) * 1e3)
            gate_cpu_ms.append((c2 - c1) * 1e3)
    return {
        "n_cases": len(cases),
        "score_ms": score_ms,
        "gate_ms": gate_ms,
        "gate_cpu_ms": gate_cpu_ms,
        "verdicts": verdicts,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    emit(measure(read_spec(sys.argv)))
