"""Build a ``dqe gate-eval`` list from the real cases in ../shared/data and their synthetic failures.

Every real algorithm segmentation (BraTS-GLI-00001-000: seg-BraTS23_1, its _mapped copy, BraTS Toolkit
isen; TCGA-DU-7294 and OtherEXampleFromTCIA: 5 BraTS Toolkit algorithms + 2 fusions each; brainlesion-BraTS)
is listed as ``good``. From each distinct one (the _mapped copy and the ``simple`` fusion, identical to
``mav``, are not reused) failures are generated with ``--seeds`` seeds and written as NIfTI (the
segmentation's own affine, uint8) under ``--out``, listed as ``bad`` with their exam and their WT/TC/ET
Dice to the source:

* ``--set mechanisms`` (default): the independent failure mechanisms of :mod:`dqe.models.qc.mechanisms`
  (wrong interpolation, missing slab, other registration, label-convention mistakes, ...), on which no
  gate threshold was set -- the non-circular evaluation;
* ``--set modes``: the failure modes of :mod:`dqe.models.qc.failures` the gate was calibrated on (several
  are the inverse of a check: evaluating on them is circular); ``empty`` is written once per source;
* ``--set both``.

Seeds that give an identical failure (deterministic mechanisms) are listed once.

    .venv/bin/python benchmarks/build_gate_eval_list.py --out benchmarks/out/gate_eval
    .venv/bin/dqe gate-eval benchmarks/out/gate_eval/list.csv --out benchmarks/out/gate_eval/report

Nothing is written inside the repository except under the git-ignored ``benchmarks/out``.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("DQE_SHARED_DATA", REPO.parent / "shared" / "data"))
MODALITY_FILES = {"t1c": "t1c", "t1": "t1n", "t2": "t2w", "flair": "t2f"}
TOOLKIT_FILES = {"t1c": "t1c", "t1": "t1", "t2": "t2", "flair": "fla"}
DUPLICATES = ("seg-BraTS23_1_mapped", "fusion/simple")  # same voxels as another listed segmentation


def real_segmentations(shared: Path = SHARED) -> list[tuple[str, dict[str, Path]]]:
    """(name, files) for every real algorithm segmentation in the shared data, images included."""
    out: list[tuple[str, dict[str, Path]]] = []
    dqe = shared / "brainlesion-deep_quality_estimation" / "tests" / "data"
    if dqe.is_dir():
        base = {k: dqe / f"{v}.nii.gz" for k, v in MODALITY_FILES.items()}
        for seg in ("seg-BraTS23_1", "seg-BraTS23_1_mapped", "seg-bratstoolkit_isen"):
            out.append((f"BraTS-GLI-00001-000/{seg}", {**base, "segmentation": dqe / f"{seg}.nii.gz"}))
    for case in ("TCGA-DU-7294", "OtherEXampleFromTCIA"):
        root = shared / "brainlesion-tutorials" / "BraTS-Toolkit" / "data" / case / f"{case}_brainles"
        if not root.is_dir():
            continue
        base = {k: root / "raw_bet" / f"{case}_{v}_bet.nii.gz" for k, v in TOOLKIT_FILES.items()}
        segs = sorted((root / "segmentation").glob("*.nii.gz")) + sorted((root / "fusion").glob("*.nii.gz"))
        for path in segs:
            out.append(
                (f"{case}/{path.parent.name}/{path.name.split('.')[0]}", {**base, "segmentation": path})
            )
    pre = shared / "brainlesion-BraTS" / "data" / "preprocessed_case"
    if pre.is_dir():
        base = {k: pre / f"{v}.nii.gz" for k, v in MODALITY_FILES.items()}
        out_seg = shared / "brainlesion-BraTS" / "outputs" / "segmentation.nii.gz"
        out.append(("brainlesion-BraTS/preprocessed_case", {**base, "segmentation": out_seg}))
    return out


def exam_of(name: str) -> str:
    """The exam (image set) a listed segmentation belongs to: its name up to the first ``/``."""
    return name.split("/")[0]


def _generators(labels, which: str):  # type: ignore[no-untyped-def]
    """(kind, name, generator, deterministic) for every failure of ``which`` that applies to ``labels``."""
    from dqe.models.qc import failures, mechanisms

    out = []
    if which in ("mechanisms", "both"):
        for m in mechanisms.applicable_mechanisms(labels):
            out.append((m, mechanisms.generate, m in mechanisms.DETERMINISTIC))
    if which in ("modes", "both"):
        for m in (*[m for m in failures.applicable_modes(labels) if m != "empty"], "empty"):
            out.append((m, failures.generate_failure, m == "empty"))
    return out


def build(
    out_dir: Path, seeds: int = 2, shared: Path = SHARED, first_seed: int = 0, which: str = "mechanisms"
) -> Path:
    """Write the failures and ``list.csv`` under ``out_dir``; returns the list's path."""
    import nibabel as nib
    import numpy as np

    from dqe.models.case import Case
    from dqe.models.qc.brain import brain_mask_full
    from dqe.models.qc.mechanisms import region_dice

    out_dir = out_dir.resolve()  # the list holds absolute paths (relative ones are read against the CSV)
    cases = real_segmentations(shared)
    if not cases:
        raise SystemExit(f"no real cases under {shared} (set DQE_SHARED_DATA)")
    seg_dir = out_dir / "segs"
    seg_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    brains: dict[str, np.ndarray] = {}
    images: dict[str, dict] = {}
    for name, files in cases:
        key = str(files["t1c"])
        case = Case.from_files(**files, case_id=name, images=images.get(key))  # type: ignore[arg-type]
        images.setdefault(key, dict(zip(("t1c", "t1", "t2", "flair"), case.images, strict=True)))
        common = {k: str(files[k]) for k in ("t1c", "t1", "t2", "flair")}
        rows.append(
            {
                **common,
                "segmentation": str(files["segmentation"]),
                "label": "good",
                "case": name,
                "exam": exam_of(name),
                "mode": "good",
                "seed": "",
                "dice_wt": "1.0000",
                "dice_tc": "1.0000",
                "dice_et": "1.0000",
            }
        )
        if any(name.endswith(d) for d in DUPLICATES):
            continue
        if key not in brains:
            brains[key] = brain_mask_full(case.images)
        affine = case.segmentation.affine
        seen: set[bytes] = set()
        for mode, generate, deterministic in _generators(case.labels, which):
            for seed in range(first_seed, first_seed + (1 if deterministic else seeds)):
                t0 = time.perf_counter()
                labels = generate(case.labels, mode, seed, brains[key])
                digest = hashlib.sha1(labels.tobytes()).digest()
                if digest in seen:  # a deterministic mode (swap) gives the same failure for every seed
                    continue
                seen.add(digest)
                path = seg_dir / f"{name.replace('/', '__')}__{mode}__{seed}.nii.gz"
                img = nib.Nifti1Image(labels.astype(np.uint8), affine)
                img.header.set_data_dtype(np.uint8)
                nib.save(img, str(path))
                rows.append(
                    {
                        **common,
                        "segmentation": str(path),
                        "label": "bad",
                        "case": name,
                        "exam": exam_of(name),
                        "mode": mode,
                        "seed": str(seed),
                        **{
                            f"dice_{r.lower()}": f"{region_dice(case.labels, labels, r):.4f}"
                            for r in ("WT", "TC", "ET")
                        },
                    }
                )
                print(
                    f"{name:50s} {mode:24s} seed {seed}  {(time.perf_counter() - t0) * 1e3:6.0f} ms  "
                    f"WT Dice {rows[-1]['dice_wt']}",
                    flush=True,
                )
    list_path = out_dir / "list.csv"
    with list_path.open("w", newline="") as fh:
        w = csv.DictWriter(
            fh,
            fieldnames=[
                "t1c",
                "t1",
                "t2",
                "flair",
                "segmentation",
                "label",
                "case",
                "exam",
                "mode",
                "seed",
                "dice_wt",
                "dice_tc",
                "dice_et",
            ],
        )
        w.writeheader()
        w.writerows(rows)
    n_bad = sum(r["label"] == "bad" for r in rows)
    print(f"\n{len(rows) - n_bad} good + {n_bad} bad segmentations listed in {list_path}")
    return list_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks" / "out" / "gate_eval",
        help="output folder (default benchmarks/out/gate_eval, git-ignored)",
    )
    parser.add_argument("--seeds", type=int, default=2, help="seeds per failure mode (default 2)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="first seed (the defaults were calibrated on seeds 0-2)"
    )
    parser.add_argument(
        "--set",
        dest="which",
        choices=("mechanisms", "modes", "both"),
        default="mechanisms",
        help="independent failure mechanisms (default), the calibration failure modes, or both",
    )
    args = parser.parse_args(argv)
    build(args.out, args.seeds, first_seed=args.first_seed, which=args.which)
    return 0


if __name__ == "__main__":
    sys.exit(main())
