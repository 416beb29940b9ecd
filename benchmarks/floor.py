"""The physical floor of the network on this CPU (child process).

* work: multiply-accumulates of every Conv and Gemm/MatMul of the exported model for one exam's
  ``(3, 7, 240, 240)`` input, counted from the ONNX graph after shape inference;
* peak: GFLOP/s of a 2048 x 2048 x 2048 float32 matmul with numpy (BLAS), and with OpenVINO in f32 and bf16
  where this machine runs them; the median over ``repeats`` runs after one warm-up (the same statistic as
  every other figure).

The report divides the work by the peak (the floor, ms) and the floor by each mode's median network time
(the share of the peak the network reaches).
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.proc import emit, read_spec

logger = logging.getLogger(__name__)

N = 2048


def count_macs(onnx_path: Path, shape: tuple[int, ...] = (3, 7, 240, 240)) -> int:
    """Multiply-accumulates of every Conv and Gemm/MatMul for an input of ``shape``."""
    import numpy as np
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(onnx_path))
    for dim, value in zip(model.graph.input[0].type.tensor_type.shape.dim, shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {
        vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]
    }
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    macs = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        w = weights.get(node.input[1]) if len(node.input) > 1 else None
        if not out or w is None:
            continue
        if node.op_type == "Conv":  # per output element: (C_in / groups) * kH * kW
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            macs += int(np.prod(out)) * (w[1] if trans_b else w[0])
        elif node.op_type == "MatMul":
            macs += int(np.prod(out)) * w[0]
    return macs


def _gflops(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return 2.0 * N**3 / statistics.median(seconds) / 1e9


def peaks(repeats: int, modes: list[str]) -> dict[str, float]:
    """Median matmul GFLOP/s: ``numpy_fp32`` always, ``openvino_f32``/``openvino_bf16`` where available."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((N, N), dtype=np.float32)
    b = rng.random((N, N), dtype=np.float32)
    out = {"numpy_fp32": _gflops(lambda: a @ b, repeats)}
    hints = [h for h, mode in (("f32", "fp32-openvino"), ("bf16", "bf16")) if mode in modes]
    if not hints:
        return out
    import openvino as ov
    import openvino.opset13 as ops

    param = ops.parameter([N, N], ov.Type.f32)
    model = ov.Model([ops.matmul(param, ops.constant(b), False, False)], [param])
    for hint in hints:
        request = (
            ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint}).create_infer_request()
        )
        out[f"openvino_{hint}"] = _gflops(lambda r=request: r.infer({0: a}), repeats)  # type: ignore[misc]
    return out


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    from dqe.models.artifacts import ensure_model
    from dqe.models.registry import DEFAULT_MODEL_ID

    macs = count_macs(ensure_model(DEFAULT_MODEL_ID, build=False).onnx_path)
    return {
        "macs_per_exam": macs,
        "peak_gflops": peaks(int(spec["repeats"]), list(spec["modes"])),
        "matmul_n": N,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    emit(measure(read_spec(sys.argv)))
