"""Does fine-tuning the released DQE weights help on held-out real cases?  Leave-one-exam-out, both modes.

The four real exams in ``../shared/data`` (TCGA-DU-7294, TCGA-FG-6692 "OtherEXampleFromTCIA",
BraTS-GLI-00001-000, the brainlesion-BraTS case) have no ground truth. A *pseudo reference* stands in:
the BraTS Toolkit majority-vote fusion ``mav`` for the two TCGA exams, ``seg-BraTS23_1`` for
BraTS-GLI-00001-000 and the only segmentation of the brainlesion-BraTS case. Candidates of an exam are its
pseudo reference, the other algorithm outputs, and failures generated from the pseudo reference by
``dqe.models.qc.failures`` (all modes that apply except ``empty``).

For each mode (``metric``, ``failure``) and each held-out exam, the released weights are fine-tuned on the
other three exams (``training/configs/finetune.yaml``: all dense blocks frozen with cached features, the
last BatchNorm's affine parameters and the linear head trained, no augmentation) and the held-out exam's candidates are scored before and after, on criteria that do not
depend on the mode:

* ``mae_m`` / ``r_m``: MAE and Pearson r of the 3-view mean stars against the metric stars
  ``1 + 5 x (worst region's Dice/surface-Dice score vs the pseudo reference)``;
* ``auc``: probability that a good segmentation (reference or algorithm output) outscores a failure;
* ``fail`` / ``good``: mean stars of failures / of good segmentations;
* ``drift``: mean |after - before| on the good segmentations (what fine-tuning changed where it should not);
* verdict: :func:`dqe.training.finetune.verdict`, the rule ``dqe finetune --publish`` applies.

    .venv/bin/python benchmarks/finetune_eval.py [--epochs 100] [--modes metric,failure] [--set KEY=VALUE] [--json OUT]

CPU, 2 cores: about 10-15 minutes with a cold cache (most of it loading volumes and running dense blocks
1-3 once per view); the work folder (default ``/tmp/dqe-finetune-eval``) caches views and features.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dqe.training.finetune import (  # noqa: E402
    FinetuneCase,
    FinetuneOptions,
    build_table,
    heldout_criteria,
    summarize_heldout,
    verdict,
)

DATA = Path(os.environ.get("DQE_SHARED_DATA", REPO.parent / "shared" / "data"))
VIEWS = ("axial", "coronal", "sagittal")


def real_exams(data: Path = DATA) -> list[FinetuneCase]:
    """The four real exams with their pseudo references and candidates (see the module docstring)."""
    cases: list[FinetuneCase] = []
    dqe = data / "brainlesion-deep_quality_estimation" / "tests" / "data"
    if dqe.is_dir():
        imgs = {"t1c": "t1c", "t1": "t1n", "t2": "t2w", "flair": "t2f"}
        cases.append(
            FinetuneCase(
                exam_id="BraTS-GLI-00001-000",
                images={k: dqe / f"{v}.nii.gz" for k, v in imgs.items()},
                reference=dqe / "seg-BraTS23_1.nii.gz",
                # seg-BraTS23_1_mapped has the reference's voxels: not a distinct candidate
                candidates=(dqe / "seg-bratstoolkit_isen.nii.gz",),
            )
        )
    toolkit = data / "brainlesion-tutorials" / "BraTS-Toolkit" / "data"
    for name in ("TCGA-DU-7294", "OtherEXampleFromTCIA"):
        root = toolkit / name / f"{name}_brainles"
        if not root.is_dir():
            continue
        raw = root / "raw_bet"
        cases.append(
            FinetuneCase(
                exam_id=name,
                images={
                    k: raw / f"{name}_{v}_bet.nii.gz"
                    for k, v in {"t1c": "t1c", "t1": "t1", "t2": "t2", "flair": "fla"}.items()
                },
                reference=root / "fusion" / "mav.nii.gz",  # 'simple' is the same fusion
                candidates=tuple(sorted((root / "segmentation").glob("*.nii.gz"))),
                brain_mask=root / "brain-extraction" / "atlas_bet_t1c_mask.nii.gz",
            )
        )
    pre = data / "brainlesion-BraTS" / "data" / "preprocessed_case"
    if pre.is_dir():
        cases.append(
            FinetuneCase(
                exam_id="brainlesion-BraTS",
                images={
                    k: pre / f"{v}.nii.gz"
                    for k, v in {"t1c": "t1c", "t1": "t1n", "t2": "t2w", "flair": "t2f"}.items()
                },
                reference=data / "brainlesion-BraTS" / "outputs" / "segmentation.nii.gz",
            )
        )
    return cases


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/dqe-finetune-eval"))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--modes", default="metric,failure")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    parser.add_argument("--fresh", action="store_true", help="remove previous fold runs (caches are kept)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import pandas as pd
    import torch

    from dqe.training.config import load_config, replace
    from dqe.training.trainer import train

    torch.set_num_threads(args.threads)
    cases = real_exams()
    if len(cases) < 2:
        print(f"need the real cases in {DATA}; found {len(cases)}", file=sys.stderr)
        return 2
    work: Path = args.work
    base = load_config(REPO / "training" / "configs" / "finetune.yaml")
    results: dict[str, Any] = {"exams": [c.exam_id for c in cases], "epochs": args.epochs, "modes": {}}
    t0 = time.perf_counter()
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        opts = FinetuneOptions(mode=mode, seed=base.seed)
        table_dir = work / mode
        t_table = time.perf_counter()
        if not (table_dir / "ratings.csv").is_file():
            build_table(cases, opts, table_dir, segmentations_dir=work / "segmentations")
        cands = pd.read_csv(table_dir / "candidates.csv")
        print(f"[{mode}] table: {len(cands)} candidates ({(cands['kind'] == 'failure').sum()} failures) "
              f"in {time.perf_counter() - t_table:.0f} s", flush=True)  # fmt: skip
        folds: dict[str, Any] = {}
        for case in cases:
            run = work / f"{mode}-runs" / case.exam_id
            if args.fresh and run.exists():
                import shutil

                shutil.rmtree(run)
            cfg = replace(
                base,
                [
                    f"data.ratings={(table_dir / 'ratings.csv').resolve()}",
                    f"data.val_exams=[{case.exam_id}]",
                    f"data.cache_dir={(work / 'cache').resolve()}",
                    f"train.epochs={args.epochs}",
                    f"train.eval_every={args.epochs}",
                    "train.device=cpu",
                    f"name=ft-{mode}-{case.exam_id}",
                    *args.overrides,
                ],
            )
            t_fold = time.perf_counter()
            resume = (run / "config.yaml").is_file()
            summary = train(None if resume else cfg, run, resume=resume, progress=False)
            table = table_dir / "ratings.csv"
            frames = [
                heldout_criteria(pd.read_csv(run / sub / "predictions.csv"), cands, table)
                for sub in ("eval_initial", "eval")
            ]
            figures = summarize_heldout(*frames)
            improved, reasons = verdict(mode, figures)
            per_seg = frames[0][["segmentation", "kind", "failure_mode", "stars"]].assign(
                before=frames[0]["pred"].to_numpy()
            )
            per_seg = per_seg.merge(
                frames[1][["segmentation", "pred"]].rename(columns={"pred": "after"}), on="segmentation"
            )
            own = json.loads((run / "run.json").read_text())
            folds[case.exam_id] = {
                **figures,
                "improved": improved,
                "reasons": reasons,
                "own_target_before": own["initial_eval"]["views"],
                "own_target_after": summary["eval"]["views"],
                "per_segmentation": per_seg.assign(
                    segmentation=per_seg["segmentation"].map(lambda p: Path(p).name)
                ).to_dict("records"),
                "seconds": time.perf_counter() - t_fold,
            }
            print(f"[{mode}] held out {case.exam_id}: {time.perf_counter() - t_fold:.0f} s", flush=True)
        results["modes"][mode] = {"options": dataclasses.asdict(opts), "folds": folds}
    results["seconds"] = time.perf_counter() - t0
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


def print_table(results: dict[str, Any]) -> None:
    cols = ("mae_m", "r_m", "auc", "good", "fail")
    print()
    print("held-out exam, before -> after fine-tuning (3-view mean stars of each segmentation;")
    print("mae_m / r_m against the metric stars vs the pseudo reference; auc good vs failure; drift of good)")
    print(
        f"{'mode':8s} {'held-out exam':22s} {'n':>3s} "
        + " ".join(f"{c:>14s}" for c in cols)
        + f" {'drift':>6s}  verdict"
    )
    for mode, res in results["modes"].items():
        rows = []
        for exam, f in res["folds"].items():
            b, a = f["before"], f["after"]
            cells = " ".join(f"{b[c]:5.2f} -> {a[c]:5.2f}".rjust(14) for c in cols)
            print(
                f"{mode:8s} {exam:22s} {b['n']:3d} {cells} {f['drift']:6.2f}  {'better' if f['improved'] else 'not better'}"
            )
            rows.append(f)
        mean = {t: {c: float(np.nanmean([r[t][c] for r in rows])) for c in cols} for t in ("before", "after")}
        cells = " ".join(f"{mean['before'][c]:5.2f} -> {mean['after'][c]:5.2f}".rjust(14) for c in cols)
        drift = float(np.nanmean([r["drift"] for r in rows]))
        wins = sum(r["improved"] for r in rows)
        print(
            f"{mode:8s} {'mean of folds':22s} {'':3s} {cells} {drift:6.2f}  better in {wins}/{len(rows)} folds"
        )
    print(f"total {results['seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
