"""``--engine ray`` on a local Ray instance gives exactly the local engine's results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.test_batch_data import BROKEN, build_dataset

pytest.importorskip("pandas")
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        pytest.skip("a Ray instance is already running in this process")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_engine_matches_local_engine(local_ray, tmp_path_factory: pytest.TempPathFactory) -> None:
    import pandas as pd

    from dqe.service.batch import BatchOptions, run_batch
    from dqe.service.engine import EngineConfig

    data = build_dataset(tmp_path_factory.getbasetemp() / "batch-dataset")
    subs = [data["alpha"], data["gamma"]]
    cfg = EngineConfig(intra_op_threads=1)
    outs = {}
    for engine in ("local", "ray"):
        out = tmp_path_factory.mktemp(f"batch-{engine}") / "out"
        outcome = run_batch(
            data["cases"],
            subs,
            out,
            engine_config=cfg,
            options=BatchOptions(
                engine=engine, progress=False, gate=False, images=True, workers=1, ray_concurrency=1
            ),
        )
        assert (outcome.total, outcome.scored_now, outcome.failed) == (6, 6, 1)
        outs[engine] = out
    assert ray.is_initialized(), "run_batch must leave a Ray instance it did not start running"
    local = pd.read_parquet(outs["local"] / "scores.parquet")
    remote = pd.read_parquet(outs["ray"] / "scores.parquet")
    for col in ("case", "team", "error", "error_code", "png", "input_key"):
        assert list(remote[col]) == list(local[col]), col
    for col in ("mean_stars", "axial", "coronal", "sagittal", "com_x", "com_y", "com_z"):
        np.testing.assert_array_equal(remote[col].to_numpy(float), local[col].to_numpy(float), err_msg=col)
    bad = remote[(remote["case"] == BROKEN[0]) & (remote["team"] == BROKEN[1])]
    assert bad["error"].iloc[0].startswith("UnreadableFile")
    # Mosaics travel back from the actors and are written by the driver, byte for byte the same.
    for name in remote.loc[remote["png"] != "", "png"]:
        assert (outs["ray"] / "png" / name).read_bytes() == (outs["local"] / "png" / name).read_bytes()
    assert json.loads((outs["ray"] / "summary.json").read_text())["engine"] == "ray"
    # Resuming under Ray skips everything already journaled.
    again = run_batch(
        data["cases"],
        subs,
        outs["ray"],
        engine_config=cfg,
        options=BatchOptions(engine="ray", progress=False, gate=False),
    )
    assert (again.skipped, again.scored_now) == (6, 0)
