"""The conformal gate on expert ground truth: build the calibration artifact, and evaluate leave one site out.

    .venv/bin/python benchmarks/gate_conformal.py calibrate   # -> models/qc/gate_calibration.json
    .venv/bin/python benchmarks/gate_conformal.py evaluate    # -> benchmarks/out/gate_conformal/

Data (``../shared/data``, ``DQE_SHARED_DATA``): the 16 BraTS exams with expert ground truth in
``brats2018-groundtruth`` (site = the BraTS institution prefix: CBICA, TCIA01..05, 2013, BraTS2021) and the
older exams' algorithm outputs (:func:`benchmarks.build_gate_eval_list.real_segmentations`). Good
calibration cases: every expert ground truth, and each algorithm output of an older exam whose whole-tumour
Dice with the majority vote of the exam's *other* algorithm outputs is >= ``AGREE_DICE`` (leave one
algorithm out; BraTS-GLI's two outputs against each other; brainlesion-BraTS has a single output and is
not used). The artifact stores scores only (numbers derived from the images, no voxels).

``evaluate`` (the acceptance of issue 18), every verdict from :func:`dqe.models.qc.gate.evaluate_case`
with the site under test left out of the calibration (``GateConfig.calibration_exclude_sites``):

* the 16 expert ground truths; the older exams' outputs (leave that exam out);
* fault families of :mod:`dqe.models.qc.faults` made from each ground truth (``--seeds`` seeded instances
  of each randomised family, fresh seeds by default: ``--first-seed 100``): detection per family and per
  region with Clopper-Pearson intervals;
* the real algorithm outputs ``DeepBrainSeg_Prediction*`` of five ground-truth folders: verdict vs true Dice;
* the predicted Dice, refitted leave one site out: MAE, Spearman, coverage of the 90 % interval;
* stars parity: the engine's stars for every row are computed before the gate and compared after it.

Tables go to ``summary.json`` and ``tables.md``; ``--write-docs`` replaces the marked blocks of README.md
and benchmarks/RESULTS.md with them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("DQE_SHARED_DATA", REPO.parent / "shared" / "data"))
GT_DIR = "brats2018-groundtruth"
AGREE_DICE = 0.85
OLD_SITES = {
    "BraTS-GLI-00001-000": "BraTS2023",
    "TCGA-DU-7294": "TCGA-DU",
    "OtherEXampleFromTCIA": "TCGA-FG",
    "brainlesion-BraTS": "brainlesion-BraTS",
}
DUPLICATES = ("seg-BraTS23_1_mapped", "fusion/")
MARK = "gate-conformal"

logger = logging.getLogger("gate_conformal")


def site_of(case: str) -> str:
    """BraTS institution prefix of a ground-truth exam, or the source of an older exam."""
    if case.startswith("BraTS2021"):
        return "BraTS2021"
    if case.startswith("Brats18_"):
        return case.split("_")[1]
    return OLD_SITES.get(case.split("/")[0], case.split("/")[0])


def gt_exams(shared: Path = SHARED) -> list[tuple[str, dict[str, Path], list[Path]]]:
    """(exam, files with the expert segmentation, real algorithm outputs) of every ground-truth exam."""
    root = shared / GT_DIR
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        n = d.name
        names = {"t1c": "t1ce", "t1": "t1", "t2": "t2", "flair": "flair", "segmentation": "seg"}
        files = {k: d / f"{n}_{v}.nii.gz" for k, v in names.items()}
        if all(p.is_file() for p in files.values()):
            out.append((n, files, sorted(d.glob("DeepBrainSeg_Prediction*.nii*"))))
    return out


def majority(others: list[np.ndarray]) -> np.ndarray:
    """Per-voxel label vote of ``others`` (ties -> the lower label; background wins only by majority)."""
    stack = np.stack(others)
    counts = np.stack([(stack == k).sum(axis=0) for k in range(5)])
    return np.argmax(counts, axis=0).astype(np.uint8)


def consensus_dice(labels: np.ndarray, others: list[np.ndarray]) -> dict[str, float]:
    from dqe.models.stats import region_dice

    ref = majority(others)
    return {r.lower(): region_dice(labels, ref, r) for r in ("WT", "TC", "ET")}


def old_outputs(shared: Path = SHARED) -> list[dict[str, Any]]:
    """The older exams' algorithm outputs with their agreement (consensus Dice with the others)."""
    from benchmarks.build_gate_eval_list import real_segmentations
    from dqe.models.case import Case

    rows = []
    for name, files in real_segmentations(shared):
        if any(d in name for d in DUPLICATES):
            continue
        rows.append({"case": name, "exam": name.split("/")[0], "files": files})
    by_exam: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_exam.setdefault(r["exam"], []).append(r)
    for rs in by_exam.values():
        labels = []
        images = None
        for r in rs:
            case = Case.from_files(**r["files"], case_id=r["case"], images=images)
            images = dict(zip(("t1c", "t1", "t2", "flair"), case.images, strict=True))
            lab = case.labels.copy()
            lab[lab == 4] = 3
            labels.append(lab)
        for i, r in enumerate(rs):
            others = labels[:i] + labels[i + 1 :]
            r["consensus"] = consensus_dice(labels[i], others) if others else None
            r["agrees"] = bool(others) and r["consensus"]["wt"] >= AGREE_DICE
    return rows


@dataclass
class Item:
    """One evaluated segmentation."""

    case: str
    site: str
    kind: str  # expert | algorithm | fault | deepbrainseg
    family: str = ""
    seed: int = -1
    dice: dict[str, float] = field(default_factory=dict)
    stars: float = math.nan
    stars_after: float = math.nan
    verdict: str = ""
    p_value: float = math.nan
    region_verdict: dict[str, str] = field(default_factory=dict)
    region_p: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    gate_ms: float = 0.0
    predicted: dict[str, list[float]] = field(default_factory=dict)


def evidence_of(gate: Any) -> dict[str, float]:
    """Evidence values keyed ``region.name`` from a :class:`GateResult`'s checks (lattice signs applied)."""
    from dqe.models.qc.regions import LATTICE_SCORES

    out = {}
    for c in gate.checks:
        if not c.region:
            continue
        sign = LATTICE_SCORES[c.name][2] if c.name in LATTICE_SCORES else 1.0
        out[f"{c.region}.{c.name}"] = sign * float(c.value)
    return out


# --------------------------------------------------------------------------------------------- calibrate
def calibrate(out: Path, seeds: int, first_seed: int) -> dict[str, Any]:
    from dqe.models.case import Case
    from dqe.models.qc.decision import Calibration
    from dqe.models.qc.dicepred import build_predictor
    from dqe.models.qc.faults import applicable, make_fault
    from dqe.models.qc.gate import case_evidence, consensus_evidence
    from dqe.models.stats import region_dice

    cases: list[dict[str, str]] = []
    evidence = []
    fault_rows: list[tuple[dict[str, float], float, dict[str, float]]] = []
    for exam, files, _ in gt_exams():
        case = Case.from_files(**files, case_id=exam)
        cases.append({"case": exam, "site": site_of(exam), "kind": "expert"})
        evidence.append(case_evidence(case))
        logger.info("calibration: %s", exam)
    for r in old_outputs():
        if not r["agrees"]:
            continue
        case = Case.from_files(**r["files"], case_id=r["case"])
        cases.append({"case": r["case"], "site": site_of(r["case"]), "kind": "algorithm"})
        evidence.append(case_evidence(case) + consensus_evidence(r["consensus"]))
        logger.info("calibration: %s (consensus WT Dice %.3f)", r["case"], r["consensus"]["wt"])
    cal = Calibration.from_scores(
        cases, evidence, source=f"benchmarks/gate_conformal.py calibrate ({GT_DIR} + agreeing older outputs)"
    )
    # Predicted-Dice model: faults made from every ground truth (true Dice exact) + the ground truths.
    for exam, files, _ in gt_exams():
        case = Case.from_files(**files, case_id=exam)
        images = dict(zip(("t1c", "t1", "t2", "flair"), case.images, strict=True))
        ev = {e.key: e.value for e in case_evidence(case)}
        fault_rows.append((ev, math.nan, {"wt": 1.0, "tc": 1.0, "et": 1.0}))
        for fam in applicable(case.labels):
            for seed in range(first_seed, first_seed + seeds):
                lab = make_fault(case.labels, fam, seed)
                try:
                    fc = Case.from_volumes({**images, "segmentation": _seg_volume(lab, case)}, exam)
                except Exception:  # noqa: BLE001 - an empty fault has no evidence; skip it
                    continue
                fev = {e.key: e.value for e in case_evidence(fc)}
                dice = {r.lower(): region_dice(case.labels, lab, r) for r in ("WT", "TC", "ET")}
                fault_rows.append((fev, math.nan, dice))
        logger.info("predictor rows: %d", len(fault_rows))
    predictor = build_predictor(fault_rows, cal)
    cal = Calibration(cal.cases, cal.scores, cal.floors, predictor, cal.source)
    out.write_text(json.dumps(cal.to_json(), indent=1, sort_keys=True) + "\n")
    return cal.summary()


def _seg_volume(labels: np.ndarray, case: Any) -> Any:
    from dqe.models.nifti import from_array

    return from_array(labels, "segmentation", case.segmentation.affine)


# --------------------------------------------------------------------------------------------- evaluate
def run_gate(
    item: Item, case: Any, engine: Any, exclude_sites: tuple[str, ...], cal_cases: tuple[str, ...] = ()
) -> None:
    from dqe.models.qc.config import GateConfig
    from dqe.models.qc.gate import evaluate_case

    cfg = GateConfig(calibration_exclude_sites=exclude_sites, calibration_exclude_cases=cal_cases)
    if engine is not None:
        result = engine.score_case(case)
        item.stars = float(result.mean_stars)
    else:
        from dqe.models.result import ScoreResult

        # stars not scored for this row: a neutral 6 keeps the star check out of the verdict
        result = ScoreResult(6.0, {}, None, [], "none", "")
    gate = evaluate_case(case, result, cfg)
    if engine is not None:
        item.stars_after = float(result.mean_stars)
    item.verdict = gate.verdict.value
    item.p_value = float(gate.p_value) if gate.p_value is not None else math.nan
    item.region_verdict = {r.region: r.verdict.value for r in gate.regions}
    item.region_p = {r.region: r.p_value for r in gate.regions}
    item.predicted = {
        r.region: [r.predicted_dice.dice, r.predicted_dice.low, r.predicted_dice.high]
        for r in gate.regions
        if r.predicted_dice is not None
    }
    item.evidence = evidence_of(gate)
    item.reasons = list(gate.reasons)
    item.gate_ms = gate.elapsed_ms


def evaluate(out: Path, seeds: int, first_seed: int, stars: str) -> dict[str, Any]:
    from dqe.models.case import Case
    from dqe.models.qc.faults import applicable, make_fault
    from dqe.models.stats import region_dice

    engine = None
    if stars != "none":
        from dqe.service.engine import Engine, EngineConfig

        engine = Engine(EngineConfig())
    items: list[Item] = []
    t_start = time.perf_counter()
    for exam, files, predictions in gt_exams():
        site = site_of(exam)
        case = Case.from_files(**files, case_id=exam)
        images = dict(zip(("t1c", "t1", "t2", "flair"), case.images, strict=True))
        it = Item(exam, site, "expert", dice={"wt": 1.0, "tc": 1.0, "et": 1.0})
        run_gate(it, case, engine, (site,))
        items.append(it)
        logger.info("%s %s p=%.3f %s", exam, it.verdict, it.p_value, it.reasons)
        for pred in predictions:
            try:
                pc = Case.from_files(**{**files, "segmentation": pred}, case_id=exam, images=images)
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                logger.warning("%s: %s", pred, exc)
                continue
            dice = {r.lower(): region_dice(case.labels, pc.labels, r) for r in ("WT", "TC", "ET")}
            it = Item(f"{exam}/{pred.name.split('.')[0]}", site, "deepbrainseg", dice=dice)
            run_gate(it, pc, engine, (site,))
            items.append(it)
        for fam in applicable(case.labels):
            for seed in range(first_seed, first_seed + seeds):
                lab = make_fault(case.labels, fam, seed)
                try:
                    fc = Case.from_volumes({**images, "segmentation": _seg_volume(lab, case)}, exam)
                except Exception:  # noqa: BLE001 - an empty fault is rejected before the gate
                    continue
                dice = {r.lower(): region_dice(case.labels, lab, r) for r in ("WT", "TC", "ET")}
                it = Item(exam, site, "fault", fam, seed, dice)
                run_gate(it, fc, engine if stars == "all" else None, (site,))
                items.append(it)
        logger.info("%s done (%d items, %.0f s)", exam, len(items), time.perf_counter() - t_start)
    for r in old_outputs():
        case = Case.from_files(**r["files"], case_id=r["case"])
        it = Item(r["case"], site_of(r["case"]), "algorithm", dice={})
        run_gate(it, case, engine, (site_of(r["case"]),))
        items.append(it)
    summary = summarize(items)
    summary["predicted_dice"] = predicted_loso(items)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    summary["load_average"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "items.json").write_text(json.dumps([it.__dict__ for it in items], default=str, indent=0))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "tables.md").write_text(tables(summary))
    return summary


def _cp(k: int, n: int) -> dict[str, Any]:
    from dqe.models.qc.evalstats import clopper_pearson

    return clopper_pearson(k, n)


def summarize(items: list[Item]) -> dict[str, Any]:
    flagged = ("review", "fail")
    experts = [i for i in items if i.kind == "expert"]
    faults = [i for i in items if i.kind == "fault"]
    fam: dict[str, Any] = {}
    for f in sorted({i.family for i in faults}):
        rs = [i for i in faults if i.family == f]
        per_region = {}
        for region in ("wt", "tc", "et"):
            hit = sum(i.region_verdict.get(region) in flagged for i in rs)
            per_region[region] = _cp(hit, len(rs))
        fam[f] = {
            "flagged": _cp(sum(i.verdict in flagged for i in rs), len(rs)),
            "failed": sum(i.verdict == "fail" for i in rs),
            "dice_wt_median": float(np.median([i.dice["wt"] for i in rs])),
            "regions": per_region,
        }
    stars_checked = [i for i in items if math.isfinite(i.stars)]
    return {
        "expert": {
            "flagged": _cp(sum(i.verdict in flagged for i in experts), len(experts)),
            "failed": _cp(sum(i.verdict == "fail" for i in experts), len(experts)),
            "rows": [
                {
                    "case": i.case,
                    "site": i.site,
                    "verdict": i.verdict,
                    "p": i.p_value,
                    "stars": i.stars,
                    "reasons": i.reasons,
                }
                for i in experts
            ],
        },
        "faults": {"flagged": _cp(sum(i.verdict in flagged for i in faults), len(faults)), "families": fam},
        "deepbrainseg": [
            {
                "case": i.case,
                "dice": i.dice,
                "verdict": i.verdict,
                "p": i.p_value,
                "regions": i.region_verdict,
                "reasons": i.reasons,
            }
            for i in items
            if i.kind == "deepbrainseg"
        ],
        "older": [
            {"case": i.case, "verdict": i.verdict, "p": i.p_value, "reasons": i.reasons}
            for i in items
            if i.kind == "algorithm"
        ],
        "stars_parity": {
            "n": len(stars_checked),
            "changed": sum(i.stars != i.stars_after for i in stars_checked),
        },
        "gate_ms_median": float(np.median([i.gate_ms for i in items])) if items else math.nan,
    }


def predicted_loso(items: list[Item], coverage: float = 0.9) -> dict[str, Any]:
    """Refit the Dice predictor without each site, predict that site: MAE, Spearman, interval coverage."""
    from dqe.models.qc.decision import load_calibration
    from dqe.models.qc.dicepred import build_predictor, features
    from dqe.models.stats import spearman

    cal_all = load_calibration()
    if cal_all is None:
        return {}
    rows = [i for i in items if i.kind in ("expert", "fault")]
    out: dict[str, Any] = {}
    preds: dict[str, list[tuple[float, float, float, float]]] = {r: [] for r in ("wt", "tc", "et")}
    for site in sorted({i.site for i in rows}):
        cal = cal_all.without([site])
        train = [(i.evidence, math.nan, i.dice) for i in rows if i.site != site]
        model = build_predictor(train, cal, coverage)
        for i in rows:
            if i.site != site:
                continue
            for region, m in model.items():
                y = i.dice.get(region, math.nan)
                if not math.isfinite(y):
                    continue
                centre = {k: (float(a), float(b)) for k, (a, b) in m["centre"].items()}
                x = features(i.evidence, math.nan, m["keys"], centre)
                d = min(max(1.0 - (m["intercept"] + float(np.dot(m["coef"], x))), 0.0), 1.0)
                preds[region].append((y, d, max(d - m["q"], 0.0), min(d + m["q"], 1.0)))
    for region, ps in preds.items():
        if not ps:
            continue
        a = np.asarray(ps)
        out[region] = {
            "n": len(ps),
            "mae": float(np.mean(np.abs(a[:, 0] - a[:, 1]))),
            "spearman": spearman(a[:, 1].tolist(), a[:, 0].tolist()),
            "coverage": float(np.mean((a[:, 0] >= a[:, 2] - 1e-9) & (a[:, 0] <= a[:, 3] + 1e-9))),
            "mean_width": float(np.mean(a[:, 3] - a[:, 2])),
            "stated": coverage,
        }
    return out


def _pct(d: dict[str, Any]) -> str:
    return f"{d['k']}/{d['n']} = {100 * d['rate']:.1f} % [{100 * d['low']:.1f}, {100 * d['high']:.1f}]"


def tables(s: dict[str, Any]) -> str:
    lines = [
        f"Expert ground truth, leave one site out (n = {s['expert']['flagged']['n']}): flagged "
        f"{_pct(s['expert']['flagged'])}, failed {_pct(s['expert']['failed'])} (95 % Clopper-Pearson).",
        "",
        "| exam | site | verdict | combined p | stars |",
        "|---|---|---|---|---|",
    ]
    for r in s["expert"]["rows"]:
        lines.append(f"| {r['case']} | {r['site']} | {r['verdict']} | {r['p']:.3f} | {r['stars']:.2f} |")
    lines += [
        "",
        f"Faults made from the ground truth: flagged {_pct(s['faults']['flagged'])}.",
        "",
        "| family | flagged (95 % CI) | failed | median WT Dice | WT region | TC region | ET region |",
        "|---|---|---|---|---|---|---|",
    ]
    for f, d in s["faults"]["families"].items():
        reg = " | ".join(f"{d['regions'][r]['k']}/{d['regions'][r]['n']}" for r in ("wt", "tc", "et"))
        lines.append(f"| {f} | {_pct(d['flagged'])} | {d['failed']} | {d['dice_wt_median']:.3f} | {reg} |")
    lines += [
        "",
        "Real algorithm outputs (DeepBrainSeg) against their true Dice:",
        "",
        "| output | WT Dice | TC Dice | ET Dice | verdict | combined p | flagged regions |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s["deepbrainseg"]:
        regs = ", ".join(k for k, v in r["regions"].items() if v != "pass") or "-"
        lines.append(
            f"| {r['case']} | {r['dice']['wt']:.3f} | {r['dice']['tc']:.3f} | {r['dice']['et']:.3f} | "
            f"{r['verdict']} | {r['p']:.3f} | {regs} |"
        )
    lines += [
        "",
        "Older exams' algorithm outputs (leave that exam out of the calibration):",
        "",
        "| output | verdict | combined p |",
        "|---|---|---|",
    ]
    for r in s["older"]:
        lines.append(f"| {r['case']} | {r['verdict']} | {r['p']:.3f} |")
    pdice = s.get("predicted_dice") or {}
    if pdice:
        lines += [
            "",
            "Predicted Dice, leave one site out (faults + ground truth of the held-out site):",
            "",
            "| region | n | MAE | Spearman | coverage (stated 90 %) | mean interval width |",
            "|---|---|---|---|---|---|",
        ]
        for region, d in pdice.items():
            lines.append(
                f"| {region.upper()} | {d['n']} | {d['mae']:.3f} | {d['spearman']['r']:.2f} | "
                f"{100 * d['coverage']:.1f} % | {d['mean_width']:.2f} |"
            )
    mech = s.get("mechanisms") or {}
    if mech:
        lines += [
            "",
            f"Issue-13 failure mechanisms (`dqe gate-eval` of the same `make gate-eval`, {mech['n_bad']} failures of "
            f"the older exams' outputs; compare the issue-13 table above): flagged {mech['flagged_bad']} of "
            f"{mech['n_bad']}, good flagged {mech['flagged_good']} of {mech['n_good']}, ROC AUC gate "
            f"{mech['auc_gate']:.3f} (stars {mech['auc_stars']:.3f}).",
            "",
            "| mechanism | n | flagged (95 % CI) | failed |",
            "|---|---|---|---|",
        ]
        for m, d in sorted(mech["by_mechanism"].items()):
            lines.append(f"| {m} | {d['flagged']['n']} | {_pct(d['flagged'])} | {d['failed']['k']} |")
    sp = s["stars_parity"]
    lines += [
        "",
        f"Stars parity: {sp['changed']} of {sp['n']} scored rows changed by the gate. "
        f"Gate median {s['gate_ms_median']:.0f} ms per case in this run (load average "
        f"{', '.join(f'{x:.1f}' for x in s['load_average'])}); run took {s['seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def mechanisms_summary(path: Path) -> dict[str, Any]:
    """The issue-13 mechanism figures of a ``dqe gate-eval`` summary (empty when it does not exist)."""
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    return {
        "n_bad": m["n_bad"],
        "n_good": m["n_good"],
        "flagged_bad": m["flagged_bad"],
        "flagged_good": m["flagged_good"],
        "auc_gate": m["auc_gate"],
        "auc_stars": m["auc_stars"],
        "by_mechanism": m["detection_by_mechanism"],
    }


def write_docs(md: str) -> None:
    for path in (REPO / "README.md", REPO / "benchmarks" / "RESULTS.md"):
        text = path.read_text()
        start, end = f"<!-- {MARK}:start -->", f"<!-- {MARK}:end -->"
        if start not in text:
            continue
        a, b = text.index(start) + len(start), text.index(end)
        path.write_text(text[:a] + "\n" + md + "\n" + text[b:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=("calibrate", "evaluate", "render"))
    parser.add_argument(
        "--mechanisms",
        type=Path,
        default=REPO / "benchmarks" / "out" / "gate_eval" / "report" / "summary.json",
        help="the dqe gate-eval summary of the issue-13 mechanisms (make gate-eval writes it first)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int)
    parser.add_argument(
        "--stars",
        choices=("none", "real", "all"),
        default="real",
        help="score stars with the engine for real segmentations (default), all rows, or none",
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not (SHARED / GT_DIR).is_dir():
        print(f"no {GT_DIR} under {SHARED} (set DQE_SHARED_DATA)", file=sys.stderr)
        return 2
    if args.command == "calibrate":
        out = args.out or REPO / "models" / "qc" / "gate_calibration.json"
        summary = calibrate(out, args.seeds, 0 if args.first_seed is None else args.first_seed)
    else:
        out = args.out or REPO / "benchmarks" / "out" / "gate_conformal"
        if args.command == "evaluate":
            summary = evaluate(
                out, args.seeds, 100 if args.first_seed is None else args.first_seed, args.stars
            )
        else:  # render: the tables of an earlier evaluate run (its summary.json), nothing recomputed
            summary = json.loads((out / "summary.json").read_text())
        summary["mechanisms"] = mechanisms_summary(args.mechanisms)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        (out / "tables.md").write_text(tables(summary))
        if args.write_docs:
            write_docs((out / "tables.md").read_text())
    print(
        json.dumps(
            {
                k: v
                for k, v in summary.items()
                if k in ("n", "sites", "expert", "faults", "predicted_dice", "smallest_alpha")
            },
            default=str,
        )[:4000]
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
