"""Option builders and helpers shared by every command: case, engine, model, gate, client options; JSON output.

Options default to ``None`` and are resolved in ``run()`` by the settings layer (:mod:`dqe.service.settings`),
so flags win over ``DQE_*`` variables and a bad variable is a typed error of the command, never of ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dqe.models.dicom import is_dicom_study_dir
from dqe.models.errors import DQEError, InvalidInput
from dqe.models.labels import CHOICES
from dqe.models.qc.alpha import check_alpha, with_alpha
from dqe.models.qc.config import GateConfig
from dqe.service.settings import CaseSettings, ClientSettings, EngineSettings, GateSettings, Settings

if TYPE_CHECKING:
    from dqe.models.case import Case
    from dqe.models.qc.config import GateConfig
    from dqe.service.engine import EngineConfig

EXIT_INVALID = 2


def add_case_args(parser: argparse.ArgumentParser) -> None:
    """A case folder with BraTS naming, and/or explicit files (explicit files win)."""
    parser.add_argument("case_dir", nargs="?", help="case folder with BraTS 2023/2021/Toolkit file names")
    for name in ("t1c", "t1", "t2", "flair"):
        parser.add_argument(f"--{name}", metavar="FILE", help=f"{name} NIfTI file")
    parser.add_argument("--seg", "--segmentation", dest="seg", metavar="FILE", help="segmentation NIfTI file")
    add_label_convention_arg(parser)
    add_dicom_args(parser)


def add_dicom_args(parser: argparse.ArgumentParser) -> None:
    """Options of a DICOM study folder (CASE_DIR holding DICOM files; needs the dicom extra)."""
    group = parser.add_argument_group("DICOM study (CASE_DIR holds DICOM files: four MR series and a SEG)")
    group.add_argument(
        "--sr",
        metavar="OUT.dcm",
        help="write the TID 1500 Structured Report here (and, when the verdict is not pass, the Quality Issue "
        "Key Object Selection beside it as OUT-kos.dcm); implies the QC gate",
    )
    group.add_argument(
        "--series-rules", metavar="JSON", help="series selection rules (default: packaged rules)"
    )
    group.add_argument(
        "--segment-map", metavar="JSON", help="SEG segment -> label map (default: packaged map)"
    )


def dicom_study_dir(args: argparse.Namespace) -> str | None:
    """``CASE_DIR`` when it is a DICOM study (DICOM files, no NIfTI) and no NIfTI file was named explicitly."""
    folder = getattr(args, "case_dir", None)
    if not folder or any(getattr(args, n, None) for n in ("t1c", "t1", "t2", "flair", "seg")):
        return None
    return folder if is_dicom_study_dir(folder) else None


def add_label_convention_arg(parser: argparse.ArgumentParser) -> None:
    """``--label-convention NAME``: how to read the segmentation's labels (:mod:`dqe.models.labels`)."""

    parser.add_argument(
        "--label-convention",
        choices=CHOICES,
        help="segmentation label layout, mapped to BraTS labels before scoring: auto (BraTS 1/2/3 or legacy "
        "1/2/4, unchanged; default), brats2023, brats2021, brats2024-post (4 = resection cavity -> "
        "background), msd (1 edema, 2 non-enhancing, 3 enhancing), met-core-edema (1 lesion, 2 edema), "
        "whole-tumour (1 lesion); non-BraTS maps get an out-of-distribution warning (env "
        "DQE_LABEL_CONVENTION)",
    )


def label_convention(args: argparse.Namespace) -> str:
    """The label convention from ``--label-convention``, ``DQE_LABEL_CONVENTION`` or ``auto``.

    Raises:
        InvalidInput: not a known convention (names the variable and the value).
    """
    return CaseSettings.from_sources(
        {"label_convention": getattr(args, "label_convention", None)}
    ).label_convention


def _env_help(cls: type[Settings], name: str, what: str) -> str:
    return f"{what} (env {cls.env_name(name)}, default {cls.default(name)!r})"


def add_model_arg(parser: argparse.ArgumentParser) -> None:
    """``--model ID`` (env ``DQE_MODEL``; default the reference model)."""
    parser.add_argument(
        "--model", dest="model_id", metavar="ID", help=_env_help(EngineSettings, "model_id", "model id")
    )


def model_id(args: argparse.Namespace) -> str:
    """The model id from ``--model``, ``DQE_MODEL`` or the default."""
    return EngineSettings.from_sources({"model_id": getattr(args, "model_id", None)}).model_id


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Model and runtime options for commands that score in-process (values resolved in ``run()``)."""
    add_model_arg(parser)
    parser.add_argument(
        "--providers",
        help=_env_help(
            EngineSettings, "providers", "comma-separated execution providers: auto, tensorrt, cuda, cpu"
        ),
    )
    parser.add_argument(
        "--precision",
        help=_env_help(
            EngineSettings,
            "precision",
            "fp32 (reference parity), bf16 or fp16 where the hardware supports it, or auto",
        ),
    )
    parser.add_argument(
        "--backend", help=_env_help(EngineSettings, "backend", "auto (by precision), onnxruntime or openvino")
    )
    add_threads_arg(parser)


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        dest="intra_op_threads",
        type=int,
        help=_env_help(EngineSettings, "intra_op_threads", "intra-op threads, 0 = all cores"),
    )


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    """Engine settings from the command line, ``DQE_*`` and defaults.

    Raises:
        InvalidInput: a value cannot be parsed (names the flag or variable).
    """
    names = [f.name for f in dataclasses.fields(EngineSettings)]
    return EngineSettings.from_sources({n: getattr(args, n, None) for n in names})


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The :class:`EngineConfig` of :func:`engine_settings`."""
    return engine_settings(args).engine_config()


def add_parity_case_arg(parser: argparse.ArgumentParser) -> None:
    """``--parity-case DIR`` (repeatable): extra real cases for the ONNX export parity check."""
    parser.add_argument(
        "--parity-case",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="extra real case folder for the parity check (repeatable)",
    )


def add_star_threshold_arg(parser: argparse.ArgumentParser) -> None:
    """``--star-threshold S``: the QC gate reviews below this many stars."""

    parser.add_argument(
        "--star-threshold",
        type=float,
        default=None,
        help=f"review below this many stars (default {GateConfig().star_threshold:g})",
    )


def add_alpha_arg(parser: argparse.ArgumentParser) -> None:
    """``--alpha A``: the QC gate's significance level (env ``DQE_ALPHA``)."""
    parser.add_argument(
        "--alpha",
        type=float,
        default=None,
        metavar="A",
        help="QC gate significance level: flag when the combined conformal p-value is <= A (0 < A < 1, not "
        "below the calibration's smallest supported level 1/(n+1); env DQE_ALPHA; default: the gate "
        f"configuration's, {GateConfig().alpha:g})",
    )


def add_evidence_arg(parser: argparse.ArgumentParser) -> None:
    """``--evidence DIR``: write the gate's disagreement maps as NIfTI."""
    parser.add_argument(
        "--evidence",
        metavar="DIR",
        default=None,
        help="write a NIfTI map (float32, the segmentation's grid and affine) of where segmentation and "
        "images disagree to DIR/<case>_evidence.nii.gz",
    )


def gate_case(
    case: Case, result: Any, cfg: GateConfig, evidence_dir: str | None = None
) -> tuple[Any, Path | None]:
    """The gate result of a scored case with per-region evidence slices; with ``evidence_dir`` also the
    disagreement map written there (its path; ``None`` when not asked for or not computable)."""
    from dqe.models.qc.explain import (  # lazy: NIfTI stack (scipy) loads only when a case is gated
        gate_with_evidence,
    )
    from dqe.service.evidence_io import (  # lazy: nibabel loads only when a case is gated
        write_evidence_map,
    )

    gate, full = gate_with_evidence(case, result, cfg, full_map=evidence_dir is not None)
    path = None
    if full is not None and evidence_dir is not None:
        path = write_evidence_map(case, full, evidence_dir, case.case_id)
    return gate, path


def gate_config(args: argparse.Namespace) -> GateConfig:
    """The QC gate settings ``--star-threshold`` and ``--alpha`` (or ``DQE_ALPHA``) ask for.

    Raises:
        InvalidInput: alpha outside (0, 1) or below the calibration's smallest supported level.
    """
    cfg = GateConfig()
    if getattr(args, "star_threshold", None) is not None:
        cfg = dataclasses.replace(cfg, star_threshold=args.star_threshold)
    return with_alpha(alpha_arg(args), cfg)


def alpha_arg(args: argparse.Namespace) -> float | None:
    """The significance level asked for: ``--alpha`` (must be 0 < A < 1), else ``DQE_ALPHA`` (0 = unset),
    else ``None`` (the gate configuration's default). Range-checked; the calibration floor is checked where
    the gate configuration is built.

    Raises:
        InvalidInput: out of range or not a number.
    """
    flag = getattr(args, "alpha", None)
    if flag is not None:
        return check_alpha(flag, GateConfig())
    return GateSettings.from_sources({}).alpha or None


def add_remote_args(parser: argparse.ArgumentParser) -> None:
    """Deadline, retry and credential options of commands that call a server."""
    parser.add_argument(
        "--deadline",
        dest="deadline_s",
        type=float,
        metavar="S",
        help=_env_help(ClientSettings, "deadline_s", "overall deadline in seconds, retries included"),
    )
    parser.add_argument(
        "--retries",
        type=int,
        help=_env_help(
            ClientSettings,
            "retries",
            "retries on UNAVAILABLE (on another replica when there are several), with backoff",
        ),
    )
    parser.add_argument("--token", help="bearer token (env DQE_TOKEN)")


def client_settings(args: argparse.Namespace) -> ClientSettings:
    """Client settings from the command line, ``DQE_*`` and defaults.

    Raises:
        InvalidInput: a value cannot be parsed (names the flag or variable).
    """
    names = [f.name for f in dataclasses.fields(ClientSettings)]
    return ClientSettings.from_sources({n: getattr(args, n, None) for n in names})


def case_files(args: argparse.Namespace) -> dict[str, str] | None:
    explicit = {"t1c": args.t1c, "t1": args.t1, "t2": args.t2, "flair": args.flair, "segmentation": args.seg}
    if all(explicit.values()):
        return explicit  # type: ignore[return-value]
    return None


def load_case(args: argparse.Namespace) -> Case:
    """The case named on the command line.

    Raises:
        InvalidInput: neither a folder nor all five files were given.
    """
    from dqe.models.case import (  # lazy: decoding stack (nibabel, scipy, onnxruntime) loads when the command runs: `dqe --help` stays instant
        Case,
        discover_files,
    )

    files = case_files(args)
    convention = label_convention(args)
    if files is not None:
        return Case.from_files(
            files["t1c"],
            files["t1"],
            files["t2"],
            files["flair"],
            files["segmentation"],
            label_convention=convention,
        )
    if not args.case_dir:
        raise InvalidInput("give a case folder or all of --t1c --t1 --t2 --flair --seg", field="case_dir")
    found = discover_files(args.case_dir, require_segmentation=args.seg is None)
    for name in ("t1c", "t1", "t2", "flair"):
        if getattr(args, name):
            found[name] = getattr(args, name)
    if args.seg:
        found["segmentation"] = args.seg
    return Case.from_files(
        **found,  # type: ignore[arg-type]
        case_id=Path(args.case_dir).name,
        label_convention=convention,
    )


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def error_payload(exc: BaseException) -> dict[str, Any]:

    if isinstance(exc, DQEError):
        return {"error": {"code": exc.code, "kind": exc.kind, "field": exc.field, "message": exc.message}}
    return {"error": {"code": "INTERNAL", "kind": type(exc).__name__, "field": None, "message": str(exc)}}
