"""``dqe train``, ``dqe evaluate``, ``dqe finetune`` and ``dqe publish``: the training pipeline's commands.

Only argparse is imported at module level; torch, MONAI and pandas are imported inside the commands, so
``dqe --help`` stays instant and the serving install (no torch) still lists these commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dqe.models.contract import PreprocessingContract
from dqe.models.errors import DQEError, InvalidInput
from dqe.service.commands.common import EXIT_INVALID, add_parity_case_arg, error_payload, print_json
from dqe.training.config import load_config, replace
from dqe.training.data import read_ratings
from dqe.training.evaluate import evaluate_ratings, format_metrics
from dqe.training.segmentation.config import load_seg_config

CONFIGS = Path(__file__).resolve().parent / "configs"


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train a quality estimator from a ratings table (torch; GPU when present)",
        description="Train with a config file (training/configs/paper.yaml is the paper's recipe, "
        "training/configs/smoke.yaml a one-minute CPU run on synthetic data). Writes RUN_DIR/metrics.csv, "
        "checkpoints, TensorBoard logs and a held-out evaluation.",
    )
    _add_run_args(t, "train.epochs=3")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override train.device")
    t.add_argument(
        "--publish", metavar="MODEL_ID", help="export the finished run to the model home as MODEL_ID"
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=run_train)

    e = sub.add_parser(
        "evaluate",
        help="MAE / RMSE / Pearson r per view and 3-view mean, with scatter and Bland-Altman plots",
        description="Evaluate a training run (torch) or a published model (ONNX Runtime, no torch) on a "
        "ratings table; without --ratings, a run is evaluated on its own held-out exams.",
    )
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, metavar="RUN_DIR", help="a finished training run")
    src.add_argument("--model", metavar="MODEL_ID", help="a published model in the model home")
    e.add_argument("--ratings", type=Path, help="ratings table (CSV/Parquet); required with --model")
    e.add_argument(
        "--out", type=Path, required=True, help="folder for metrics.json, predictions.csv and plots"
    )
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.set_defaults(func=run_evaluate)

    f = sub.add_parser(
        "finetune",
        help="fine-tune the released weights on metric-surrogate or failure-aware targets",
        description="Build ratings from a cases table (exam_id,t1c,t1,t2,flair,reference[,candidates][,brain_mask]) "
        "-- metric: 1 + 5 x (Dice/surface-Dice score vs. the reference); failure: generated failures rated low, "
        "good segmentations keep the released model's stars -- then train from the released weights.",
    )
    f.add_argument("--mode", choices=("metric", "failure"), required=True)
    f.add_argument("--cases", type=Path, required=True, help="cases table (CSV)")
    f.add_argument(
        "--config",
        type=Path,
        default=CONFIGS / "finetune.yaml",
        help="training config (default: %(default)s)",
    )
    f.add_argument("--out", type=Path, required=True, metavar="RUN_DIR")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    f.add_argument(
        "--failure-modes", default="", help="comma-separated failure modes (default: all that apply)"
    )
    f.add_argument("--seeds-per-mode", type=int, default=1)
    f.add_argument("--failure-stars", type=float, default=1.5, help="target for failures (failure mode)")
    f.add_argument(
        "--good-stars",
        default="teacher",
        help="target for good segmentations in failure mode: 'teacher' (the released model's own stars) or a number",
    )
    f.add_argument("--device", choices=("auto", "cpu", "cuda"))
    f.add_argument(
        "--publish", metavar="MODEL_ID", help="export the result if it improved on the held-out exams"
    )
    f.add_argument("--publish-anyway", action="store_true", help="publish even if it did not improve")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=run_finetune)

    p = sub.add_parser(
        "publish", help="export a finished training run to ONNX (parity-checked) in the model home"
    )
    p.add_argument("run", type=Path, metavar="RUN_DIR")
    p.add_argument("--model-id", required=True, help="id to serve it under (dqe serve --model ID)")
    p.add_argument("--force", action="store_true", help="replace an existing published model of that id")
    add_parity_case_arg(p)
    p.set_defaults(func=run_publish)
    _register_seg_train(sub)
    _register_curate(sub)


def _add_run_args(parser: argparse.ArgumentParser, example: str) -> None:
    """--config, --out, --resume and --set, shared by the training commands."""
    parser.add_argument("--config", type=Path, help="YAML config (not needed with --resume)")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run directory")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in RUN_DIR from its last checkpoint"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. {example} (repeatable)",
    )


def _register_seg_train(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "seg-train",
        help="train a MONAI segmentation network (SegResNet/UNet) with any registered loss, DQE term included",
        description="Train on BraTS-style exams (data.root) or seeded phantoms (data.synthetic) at a reduced grid; "
        "training/configs/seg_brats.yaml uses the 16 expert-labelled exams, seg_smoke.yaml is `make seg-smoke`. "
        "Writes RUN_DIR/metrics.csv (per-region Dice and HD95), run.json, checkpoints/last.pt and model.pth.",
    )
    _add_run_args(s, "loss=channel_wise_weighted")
    s.set_defaults(func=run_seg_train)


def _register_curate(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "curate",
        help="rate every training case of a BraTS or nnU-Net dataset; keep/review/drop list and curated splits",
        description="Scores each training case's label map with DQE and the QC gate (the batch scorer, resumable "
        "on OUT/batch/journal.jsonl), decides keep / review / drop with reasons, and writes curation.csv, "
        "splits_final.json (nnU-Net), datalist.json (MONAI) and summary.html. Prints the summary as JSON.",
    )
    c.add_argument(
        "dataset", type=Path, help="BraTS folder of case folders, or an nnU-Net raw dataset folder"
    )
    c.add_argument(
        "--out", type=Path, required=True, help="output folder (rerun with the same one to resume)"
    )
    c.add_argument("--drop-below", type=float, default=2.0, help="stars below which a case is dropped")
    c.add_argument("--review-below", type=float, default=3.5, help="stars below which a case goes to review")
    c.add_argument("--folds", type=int, default=5, help="folds in splits_final.json")
    c.add_argument("--seed", type=int, default=0, help="seed of the fold assignment")
    c.add_argument("--progress", action="store_true", help="progress bar on stderr")
    c.set_defaults(func=run_curate)


def run_curate(args: argparse.Namespace) -> int:
    from dqe.training.curate import (  # lazy: nibabel and the batch scorer load when the command runs
        CurateOptions,
        curate,
    )

    try:
        if not 0 < args.drop_below <= args.review_below:
            raise InvalidInput("expected 0 < --drop-below <= --review-below", field="drop_below")
        opts = CurateOptions(args.drop_below, args.review_below, args.folds, args.seed)
        summary = curate(args.dataset, args.out, opts, progress=args.progress)
    except (DQEError, ValueError, OSError) as exc:
        return _fail(exc)
    print_json(summary)
    return 0


def run_seg_train(args: argparse.Namespace) -> int:
    from dqe.training.segmentation.trainer import (  # lazy: torch and MONAI (train extra only): `dqe --help` stays torch-free
        resume_config,
        seg_train,
    )

    try:
        if args.resume:
            cfg = resume_config(args.out, args.overrides)
        elif args.config is None:
            raise InvalidInput("--config is required for a new run", field="config")
        else:
            cfg = load_seg_config(args.config, args.overrides)
        last = seg_train(cfg, args.out, resume=args.resume)
    except (DQEError, ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    print_json({"run_dir": str(args.out), "epochs": cfg.train.epochs, "last": last})
    return 0


def _fail(exc: BaseException) -> int:
    print_json(error_payload(exc))
    return EXIT_INVALID


def _published(art: Any) -> dict[str, Any]:
    return {
        "model_id": art.model_id,
        "directory": str(art.directory),
        "onnx_sha256": art.onnx_sha256,
        "parity": art.card.get("parity"),
    }


def _publish(run_dir: Path, model_id: str, force: bool, extra_cases: list[Path] | None = None) -> Any:
    """Export a run; torch.onnx prints its progress on stdout, which must stay clean JSON: send it to stderr."""
    import contextlib

    from dqe.training.publish import (  # lazy: torch (train extra only): `dqe --help` and serving stay torch-free
        publish_run,  # lazy: torch (export/train extras only): keeps the CLI, the server and the client torch-free
    )

    with contextlib.redirect_stdout(sys.stderr):
        return publish_run(run_dir, model_id, force=force, extra_cases=extra_cases or [])


def run_train(args: argparse.Namespace) -> int:
    from dqe.training.trainer import (  # lazy: torch (export/train extras only): keeps the CLI, the server and the client torch-free
        RunError,
        train,
    )

    try:
        if args.config is None and not args.resume:
            raise RunError("--config is required for a new run")
        cfg = load_config(args.config, args.overrides) if args.config else None
        if cfg is None and args.overrides:
            from dqe.training.trainer import (  # lazy: torch (train extra only): `dqe --help` and serving stay torch-free
                resolve_run_config,  # lazy: torch (export/train extras only): keeps the CLI, the server and the client torch-free
            )

            cfg = replace(resolve_run_config(None, args.out, True), args.overrides)
        summary = train(cfg, args.out, resume=args.resume, device=args.device, progress=not args.no_progress)
        out: dict[str, Any] = {
            k: summary[k] for k in ("run_dir", "epochs_completed", "epochs", "seconds") if k in summary
        }
        out["last"] = summary["history"][-1] if summary["history"] else None
        out["eval"] = summary.get("eval")
        if args.publish:
            out["published"] = _published(_publish(args.out, args.publish, force=True))
    except (DQEError, ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    print_json(out)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:

    try:
        if args.model:
            if args.ratings is None:
                raise InvalidInput("--ratings is required with --model", field="ratings")
            from dqe.service.engine import (  # lazy: decoding stack (nibabel, scipy, onnxruntime) loads when the command runs: `dqe --help` stays instant
                Engine,
                EngineConfig,
            )

            engine = Engine(EngineConfig(model_id=args.model))
            df = read_ratings(args.ratings, views=engine.contract.views)
            result = evaluate_ratings(df, engine.contract, engine.run, args.out, title=args.model)
        else:
            result = _evaluate_run(args)
    except (DQEError, ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    print(format_metrics(result["metrics"]), file=sys.stderr)
    print_json(result)
    return 0


def _evaluate_run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from dqe.models.network import (  # lazy: torch (export/train extras only)
        load_network,  # lazy: torch (export/train extras only): keeps the CLI, the server and the client torch-free
    )
    from dqe.training.model import (  # lazy: torch (train extra only): `dqe --help` and serving stay torch-free
        resolve_device,  # lazy: torch (export/train extras only): keeps the CLI, the server and the client torch-free
    )
    from dqe.training.publish import (  # lazy: torch (train extra only): `dqe --help` and serving stay torch-free
        run_weights,  # lazy: torch (export/train extras only): keeps the CLI, the server and the client torch-free
    )

    run_dir: Path = args.run
    record = json.loads((run_dir / "run.json").read_text())
    contract = PreprocessingContract.from_dict(record["contract"])
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    device = resolve_device(args.device)
    net = load_network(run_weights(run_dir), cfg["model"]["architecture"], contract.n_channels).to(device)
    table = args.ratings or Path(record["ratings"])
    df = read_ratings(table, views=contract.views)
    if args.ratings is None:
        df = df[df["exam_id"].isin(set(record["val_exams"]))]

    def predict(views: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (
                net(torch.from_numpy(np.ascontiguousarray(views)).to(device))
                .float()
                .cpu()
                .numpy()
                .reshape(-1)
            )

    return evaluate_ratings(df, contract, predict, args.out, title=str(record.get("name", run_dir.name)))


def run_finetune(args: argparse.Namespace) -> int:
    from dqe.training.finetune import (  # lazy: decoding stack (nibabel, scipy, onnxruntime) loads when the command runs: `dqe --help` stays instant
        FinetuneOptions,
        finetune,
        read_cases,
    )

    try:
        cfg = load_config(args.config, args.overrides)
        options = FinetuneOptions(
            mode=args.mode,
            failure_modes=tuple(m.strip() for m in args.failure_modes.split(",") if m.strip()),
            seeds_per_mode=args.seeds_per_mode,
            failure_stars=args.failure_stars,
            good_stars=args.good_stars if args.good_stars == "teacher" else float(args.good_stars),
            seed=cfg.seed,
        ).validate()
        summary = finetune(
            read_cases(args.cases), options, cfg, args.out, device=args.device, progress=not args.no_progress
        )
        out: dict[str, Any] = {"run_dir": summary["run_dir"], **summary["finetune"]}
        if args.publish:
            if summary["improved"] or args.publish_anyway:
                out["published"] = _published(_publish(args.out, args.publish, force=True))
            else:
                out["published"] = None
                out["not_published_because"] = summary["finetune"]["reasons"]
    except (DQEError, ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    print_json(out)
    return 0


def run_publish(args: argparse.Namespace) -> int:

    try:
        art = _publish(args.run, args.model_id, force=args.force, extra_cases=args.parity_case)
    except (DQEError, ValueError, FileNotFoundError) as exc:
        return _fail(exc)
    print_json({**_published(art), "card": art.card})
    return 0
