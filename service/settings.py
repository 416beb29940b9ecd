"""One settings layer for every command and the server: frozen dataclasses filled flags > ``DQE_*`` > defaults.

Every settings class derives from :class:`Settings`; ``from_sources(cli, env)`` reads each field ``name``
from the command line (``None`` = not given), else from the environment variable ``DQE_<NAME>`` (or the name in
:data:`ENV_NAMES`), else its default, coerces it to the field's type and validates it; errors name the flag or
variable and the value. Parsed in a command's ``run()``, never at import or parser-building time, so a bad
variable cannot break ``--help``. Sequences in the environment are separated by ``os.pathsep`` (paths) or
commas (providers). Each variable has one meaning across commands:

=======================  ===================================================================
``DQE_MODEL``            model id (score, gate, batch, serve, calibrate)
``DQE_THREADS``          inference intra-op threads (0 = all cores)
``DQE_DECODE_WORKERS``   threads decoding NIfTI (serve; batch ``--workers``)
``DQE_BATCH_WORKERS``    concurrent inference batches of the server's dynamic batcher
``DQE_TOKEN``            the bearer token (server: expected; client: sent)
``DQE_DEADLINE_S``       client-side deadline of one call, retries included
``DQE_ALPHA``            the QC gate's significance level (gate, score --gate, batch, serve); 0 = default
=======================  ===================================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dqe.models.errors import InvalidInput
from dqe.models.labels import CHOICES
from dqe.models.registry import DEFAULT_MODEL_ID
from dqe.service.backends.config import EngineConfig

MIB = 1024 * 1024
ENV_PREFIX = "DQE_"
_RESERVED_HANDLER_THREADS = 8  # handler threads scoring calls never hold (fast refusals, GetModelInfo)
# Environment names that differ from DQE_<FIELD>.
ENV_NAMES = {"model_id": "DQE_MODEL", "intra_op_threads": "DQE_THREADS"}
S = TypeVar("S", bound="Settings")


def engine_config_of(settings: Any) -> EngineConfig:
    """The :class:`EngineConfig` of settings that carry the engine fields (``EngineSettings``, ``ServerConfig``)."""
    return EngineConfig(
        model_id=settings.model_id,
        providers=settings.providers,
        precision=settings.precision,
        backend=settings.backend,
        intra_op_threads=settings.intra_op_threads,
    )


class Settings:
    """Base of the settings dataclasses: construction from flags, environment and defaults."""

    @classmethod
    def env_name(cls, name: str) -> str:
        """The environment variable of field ``name``."""
        return ENV_NAMES.get(name, ENV_PREFIX + name.upper())

    @classmethod
    def default(cls, name: str) -> Any:
        """Field ``name``'s default (for help texts)."""
        return next(f.default for f in dataclasses.fields(cls) if f.name == name)  # type: ignore[arg-type]

    @classmethod
    def from_sources(
        cls: type[S], cli: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> S:
        """Settings from command-line values (``None`` = not given), then ``DQE_*`` variables, then defaults.

        Raises:
            InvalidInput: a value cannot be parsed or is out of range (the message names the flag or variable
                and the value).
        """
        cli = cli or {}
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            given = cli.get(f.name)
            if given is not None:
                source = f"--{f.name.replace('_', '-')}"
                values[f.name] = _coerce(f.name, f.default, given, source=source)
                sources[f.name] = f"{source} {given!r}"
                continue
            var = cls.env_name(f.name)
            if env.get(var, "") != "":
                values[f.name] = _coerce(f.name, f.default, env[var], source=var)
                sources[f.name] = f"{var}={env[var]!r}"
        try:
            return cls(**values)
        except InvalidInput as exc:
            if exc.field in sources:
                raise InvalidInput(f"{sources[exc.field]}: {exc.message}", field=exc.field) from None
            raise


@dataclass(frozen=True)
class EngineSettings(Settings):
    """How a command runs the model in-process (``dqe score``, ``gate``, ``batch``, ``model calibrate``).

    Attributes: see :class:`dqe.service.engine.EngineConfig` (``model_id``, ``providers``, ``precision``,
    ``backend``, ``intra_op_threads``).
    """

    model_id: str = DEFAULT_MODEL_ID
    providers: tuple[str, ...] = ("auto",)
    precision: str = "fp32"
    backend: str = "auto"
    intra_op_threads: int = 0

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0:
            raise InvalidInput(
                f"intra_op_threads is {self.intra_op_threads}; expected >= 0 (0 = all cores)",
                field="intra_op_threads",
            )

    def engine_config(self) -> EngineConfig:
        """The :class:`dqe.service.engine.EngineConfig` these settings describe."""
        return engine_config_of(self)


@dataclass(frozen=True)
class CaseSettings(Settings):
    """How a command reads a case.

    Attributes:
        label_convention: the segmentation's label layout (:data:`dqe.models.labels.CHOICES`), mapped to BraTS
            labels before scoring; ``auto`` leaves BraTS 1/2/3 and legacy 1/2/4 maps as they are.
    """

    label_convention: str = "auto"

    def __post_init__(self) -> None:
        if self.label_convention not in CHOICES:
            raise InvalidInput(
                f"label_convention is {self.label_convention!r}; expected one of {list(CHOICES)}",
                field="label_convention",
            )


@dataclass(frozen=True)
class ClientSettings(Settings):
    """How ``dqe score --server`` calls a server.

    Attributes:
        deadline_s: overall deadline of one call in seconds, retries included.
        retries: extra attempts on UNAVAILABLE, with exponential backoff.
        token: bearer token sent as ``authorization: Bearer <token>`` (empty: none).
    """

    deadline_s: float = 120.0
    retries: int = 3
    token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if self.deadline_s <= 0:
            raise InvalidInput(f"deadline_s is {self.deadline_s}; expected > 0", field="deadline_s")
        if self.retries < 0:
            raise InvalidInput(f"retries is {self.retries}; expected >= 0", field="retries")


@dataclass(frozen=True)
class BatchSettings(Settings):
    """How ``dqe batch`` runs.

    Attributes:
        decode_workers: threads decoding NIfTI (local engine) or Ray actors (``--engine ray``).
    """

    decode_workers: int = 2

    def __post_init__(self) -> None:
        if self.decode_workers < 1:
            raise InvalidInput(
                f"decode_workers is {self.decode_workers}; expected >= 1", field="decode_workers"
            )


def _check_alpha_setting(alpha: float) -> None:
    """0 (the gate configuration's default) or strictly between 0 and 1."""
    if alpha != 0.0 and not (0.0 < alpha < 1.0):
        raise InvalidInput(f"alpha is {alpha}; expected 0 < alpha < 1 (or 0 for the default)", field="alpha")


@dataclass(frozen=True)
class GateSettings(Settings):
    """How the QC gate decides (``dqe gate``, ``dqe score --gate``, ``dqe batch``).

    Attributes:
        alpha: significance level of the gate's conformal rule (flag when the combined p-value is <= alpha);
            0 leaves the gate configuration's default. Checked against the calibration's smallest supported
            level when the gate configuration is built (:func:`dqe.models.qc.alpha.check_alpha`).
    """

    alpha: float = 0.0

    def __post_init__(self) -> None:
        _check_alpha_setting(self.alpha)


def setting(
    default: Any,
    doc: str,
    group: str,
    *,
    flag: str | None = None,
    append: bool = False,
    choices: tuple[str, ...] = (),
    metavar: str | None = None,
) -> Any:
    """A settings field whose definition carries its command-line flag: ``doc`` (the help text, with units),
    ``group`` (the help section), ``flag`` (default ``--<name-with-dashes>``; ``""`` = environment only),
    ``append`` (a repeatable flag collected into a tuple), ``choices`` and ``metavar``. Booleans become
    ``--no-<name>`` (default on) or ``--<name>`` (default off). See :func:`add_flags`."""
    meta = {
        "doc": doc,
        "group": group,
        "flag": flag,
        "append": append,
        "choices": choices,
        "metavar": metavar,
    }
    return field(default=default, metadata=meta, repr=group != "secret")


@dataclass(frozen=True)
class ServerConfig(Settings):
    """How ``dqe serve`` runs; each field's definition carries its documentation, help section and flag
    (``dqe serve --help`` is generated from them by :func:`add_flags`, the ``DQE_*`` variable from the name)."""

    host: str = setting(
        "0.0.0.0", "interface to bind (0.0.0.0 all IPv4, [::] all, 127.0.0.1 loopback only)", "network"
    )
    port: int = setting(50051, "gRPC port; 0 picks a free one (see --port-file)", "network")
    port_file: str = setting(
        "", "write the bound gRPC port to this file once listening (for orchestration and tests)", "network"
    )
    max_message_mb: int = setting(
        64,
        "largest request and response in MiB (gRPC's default is 4 MiB). 64 is 5.8x the five .nii.gz of the real "
        "BraTS-GLI-00001-000 case (11.07 MB measured; 89 MB once inflated): compressed cases fit with room, "
        "uncompressed full-size cases need a larger limit, server-side paths or ScoreViews",
        "network",
    )
    handler_threads: int = setting(
        160,
        "gRPC handler threads (concurrent calls being served; the rest wait in gRPC). Scoring calls may hold "
        "all but 8 of them (half when fewer than 16); health and GetModelInfo run on --control-threads",
        "network",
    )
    control_threads: int = setting(
        4, "threads that answer health checks and GetModelInfo whatever the scoring load", "network"
    )
    max_concurrent_rpcs: int = setting(
        512,
        "calls in progress beyond this are refused with RESOURCE_EXHAUSTED at once, without reading their "
        "request; health checks and GetModelInfo are not counted (gRPC's own limit would refuse "
        "them too)",
        "network",
    )
    decode_workers: int = setting(
        2, "threads decoding NIfTI and building views (bounds CPU and memory of decoding)", "batching"
    )
    max_pending_decodes: int = setting(
        64,
        "ScoreCase calls (and stream items) waiting for or in decoding; more get RESOURCE_EXHAUSTED at once",
        "limits",
    )
    max_receiving: int = setting(
        4,
        "ScoreCase calls whose request body is received and held at once (waiting for or in decoding). Other "
        "admitted calls wait as headers only: the server does not read their message, so HTTP/2 flow control "
        "keeps their bodies at the client (64 KiB each at most)",
        "limits",
    )
    max_receiving_views: int = setting(
        16,
        "ScoreViews calls whose request is received and held at once (until they end); the others wait "
        "unread likewise. 16 calls are 48 views, twice the default inference batch",
        "limits",
    )
    receive_lease_s: float = setting(
        30.0,
        "seconds: a call whose request has not fully arrived this long after it got a receiving slot (a "
        "stalled or trickling sender) gives the slot to the next call and waits on without it",
        "limits",
    )
    max_pending_mb: int = setting(
        768,
        "MiB of ScoreCase requests (their message bytes) waiting for or in decoding; a request that does not "
        "fit gets RESOURCE_EXHAUSTED at once (768: about 70 compressed BraTS cases of 11 MB)",
        "limits",
    )
    decode_budget_mb: int = setting(
        1024,
        "MiB of inflated NIfTI the whole server may hold for calls being decoded; a call that would exceed it "
        "gets RESOURCE_EXHAUSTED before inflating (one that needs more than all of it, INVALID_ARGUMENT)",
        "limits",
    )
    max_volume_voxels: int = setting(
        32 * MIB,
        "most voxels in one decoded volume, checked from the header before inflating (32 Mi = 3.8x a BraTS "
        "240 x 240 x 155 volume)",
        "limits",
    )
    max_grid_side: int = setting(512, "longest axis of a case's grid in voxels (2.1x BraTS's 240)", "limits")
    max_view_side: int = setting(512, "largest height/width of a ScoreViews tensor in pixels", "limits")
    max_streams: int = setting(
        64, "concurrent ScoreBatch streams; more get RESOURCE_EXHAUSTED at once", "limits"
    )
    stream_idle_s: float = setting(
        60.0,
        "seconds: a ScoreBatch stream with nothing in flight that sends nothing for this long is ended with "
        "DEADLINE_EXCEEDED",
        "limits",
    )
    max_batch_size: int = setting(24, "views per inference batch (3 views per case)", "batching")
    max_queue_delay_ms: float = setting(
        5.0, "milliseconds the first view of a batch waits for more to arrive", "batching"
    )
    max_queue: int = setting(
        768, "views waiting for inference before new requests get RESOURCE_EXHAUSTED", "batching"
    )
    batch_workers: int = setting(
        1, "threads running inference batches (2 overlaps host work with a GPU)", "batching"
    )
    allowed_roots: tuple[str, ...] = setting(
        (),
        "folder server-side paths must lie in (after resolving symlinks); repeatable (environment: "
        "os.pathsep-separated); none disables server-side paths",
        "security",
        flag="--allowed-root",
        append=True,
        metavar="DIR",
    )
    tls_cert: str = setting("", "PEM server certificate chain (give --tls-key too)", "security")
    tls_key: str = setting("", "PEM server private key (give --tls-cert too)", "security")
    tls_client_ca: str = setting(
        "", "PEM CA bundle: clients must present a certificate it signed (mutual TLS)", "security"
    )
    token: str = setting(
        "",
        "bearer token clients must send as 'authorization: Bearer <token>'; empty disables",
        "secret",
        flag="",
    )
    token_file: str = setting(
        "",
        "read the bearer token from this file instead of DQE_TOKEN (keeps it out of the environment)",
        "security",
    )
    metrics_port: int = setting(
        9464, "Prometheus /metrics HTTP port; 0 picks a free one, negative disables", "observability"
    )
    metrics_host: str = setting("0.0.0.0", "interface for the metrics server", "observability")
    grace_s: float = setting(30.0, "seconds in-flight calls get to finish after SIGTERM", "network")
    max_connection_age_s: float = setting(
        300.0,
        "seconds after which a client connection is asked to reconnect (HTTP/2 GOAWAY; its calls go on), so "
        "clients that balance over DNS or a headless Service find new replicas; 0 = never",
        "network",
    )
    max_connection_age_grace_s: float = setting(
        600.0,
        "seconds the calls of a connection asked to reconnect may still run before it is closed (600 = the "
        "default --max-call-s, so no call within its limit is cut)",
        "network",
    )
    max_call_s: float = setting(
        600.0,
        "seconds one call may be processed, whether or not the client set a deadline (a call without a "
        "deadline runs as long as it takes up to this); 0 = no server-side limit",
        "network",
    )
    warmup: bool = setting(True, "run a warm-up batch before reporting SERVING", "batching")
    reflection: bool = setting(True, "gRPC server reflection (grpcurl)", "network")
    log_format: str = setting(
        "json",
        "log lines on stderr: one JSON object per line, or text",
        "observability",
        choices=("json", "text"),
    )
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING, ERROR", "observability")
    model_id: str = setting(EngineSettings.default("model_id"), "model id", "engine", flag="--model")
    providers: tuple[str, ...] = setting(
        EngineSettings.default("providers"), "comma-separated: auto, tensorrt, cuda, cpu", "engine"
    )
    precision: str = setting(
        EngineSettings.default("precision"), "fp32 (reference parity), bf16, fp16 or auto", "engine"
    )
    backend: str = setting(EngineSettings.default("backend"), "auto, onnxruntime or openvino", "engine")
    intra_op_threads: int = setting(
        EngineSettings.default("intra_op_threads"),
        "inference intra-op threads, 0 = all cores",
        "engine",
        flag="--threads",
    )
    alpha: float = setting(
        0.0,
        "the QC gate's default significance level for calls whose ScoreOptions.alpha is unset (flag a "
        "segmentation when its combined conformal p-value is <= alpha); 0 = the gate configuration's",
        "gate",
    )

    def __post_init__(self) -> None:
        _check_alpha_setting(self.alpha)
        positive = (
            "max_message_mb",
            "handler_threads",
            "max_concurrent_rpcs",
            "decode_workers",
            "max_batch_size",
            "control_threads",
            "max_pending_decodes",
            "max_receiving",
            "max_receiving_views",
            "decode_budget_mb",
            "max_pending_mb",
            "max_volume_voxels",
            "max_grid_side",
            "max_streams",
        )
        for name in (*positive, "max_queue", "batch_workers"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} is {getattr(self, name)}; expected >= 1", field=name)
        if self.handler_threads < 2:
            raise InvalidInput(
                f"handler_threads is {self.handler_threads}; expected >= 2", field="handler_threads"
            )
        if self.max_view_side < 240:
            raise InvalidInput(
                f"max_view_side is {self.max_view_side}; expected >= 240 (the network's input size)",
                field="max_view_side",
            )
        if not self.receive_lease_s > 0:
            raise InvalidInput(
                f"receive_lease_s is {self.receive_lease_s}; expected > 0", field="receive_lease_s"
            )
        if not self.stream_idle_s > 0:
            raise InvalidInput(f"stream_idle_s is {self.stream_idle_s}; expected > 0", field="stream_idle_s")
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"port is {self.port}; expected 0-65535", field="port")
        if self.max_call_s < 0:
            raise InvalidInput(
                f"max_call_s is {self.max_call_s}; expected >= 0 (0 = no limit)", field="max_call_s"
            )
        for name in ("max_connection_age_s", "max_connection_age_grace_s"):
            if getattr(self, name) < 0:
                raise InvalidInput(f"{name} is {getattr(self, name)}; expected >= 0 (0 = off)", field=name)
        if self.max_queue_delay_ms < 0 or self.grace_s < 0:
            raise InvalidInput("max_queue_delay_ms and grace_s must be >= 0", field="max_queue_delay_ms")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidInput(
                "give both tls_cert and tls_key, or neither",
                field="tls_cert" if not self.tls_cert else "tls_key",
            )
        if self.tls_client_ca and not self.tls_cert:
            raise InvalidInput("tls_client_ca (mutual TLS) needs tls_cert and tls_key", field="tls_client_ca")
        if self.log_format not in ("json", "text"):
            raise InvalidInput(
                f"log_format is {self.log_format!r}; expected 'json' or 'text'", field="log_format"
            )

    # ------------------------------------------------------------------ derived
    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * MIB

    @property
    def decode_budget_bytes(self) -> int:
        return self.decode_budget_mb * MIB

    @property
    def max_scoring_calls(self) -> int:
        """Scoring calls that may hold a handler thread at once (the rest are refused at once)."""
        return self.handler_threads - min(_RESERVED_HANDLER_THREADS, self.handler_threads // 2)

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def bearer_token(self) -> str:
        """The configured token (``token_file`` wins over ``token``), or ``""`` when auth is off.

        Raises:
            InvalidInput: ``token_file`` cannot be read or is empty.
        """
        if self.token_file:
            try:
                text = Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise InvalidInput(
                    f"token_file {self.token_file!r} cannot be read ({exc})", field="token_file"
                ) from exc
            if not text:
                raise InvalidInput(f"token_file {self.token_file!r} is empty", field="token_file")
            return text
        return self.token

    def engine_config(self) -> EngineConfig:
        """The :class:`dqe.service.engine.EngineConfig` these settings describe."""
        return engine_config_of(self)


def add_flags(parser: argparse.ArgumentParser, cls: type[Settings]) -> None:
    """Add one flag per field of ``cls`` that was defined with :func:`setting`, grouped by its ``group``,
    with help ``"<doc> (env DQE_<NAME>, default <default>)"``. Flags default to ``None`` (= not given), so
    :meth:`Settings.from_sources` falls back to the environment, then to the field's own default."""
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        meta = f.metadata
        if "doc" not in meta or meta["flag"] == "":
            continue
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        group = groups[meta["group"]]
        shown = ",".join(f.default) if isinstance(f.default, tuple) else f.default
        default = f", default {shown}" if shown not in ("", ()) else ""
        help_text = f"{meta['doc']} (env {cls.env_name(f.name)}{default})".replace("%", "%%")
        name = meta["flag"] or "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            flag = f"--no-{f.name.replace('_', '-')}" if f.default else name
            group.add_argument(flag, dest=f.name, action="store_const", const=not f.default, help=help_text)
            continue
        kind = type(f.default) if isinstance(f.default, (int, float)) else str
        group.add_argument(
            name,
            dest=f.name,
            type=kind,
            action="append" if meta["append"] else "store",
            choices=meta["choices"] or None,
            metavar=meta["metavar"],
            help=help_text,
        )


def _coerce(name: str, default: Any, value: Any, source: str) -> Any:
    """``value`` (a CLI value or an environment string) as the type of ``default``."""
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                sep = os.pathsep if name == "allowed_roots" else ","
                return tuple(v.strip() for v in value.split(sep) if v.strip())
            return tuple(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"{source} is {value!r}; expected {type(default).__name__} ({exc})", field=name
        ) from exc


@dataclass(frozen=True)
class DicomNodeConfig(EngineSettings):
    """``dqe dicom-node``: a DICOM C-ECHO / C-STORE SCP that scores studies and sends their SR back (issue 19).

    Attributes:
        ae_title: the node's own AE title (callers must call it by this name).
        host, port: where it listens (DIMSE).
        allowed_calling_aes: calling AE titles accepted (empty: any).
        spool_dir: where every instance is written on arrival (``<study>/<sop>.dcm``) and each study's state
            is kept; a restart resumes from it.
        quiet_s: a study is scored once no instance arrived for this many seconds.
        dest_host, dest_port, dest_ae: where the SR (and KOS) are sent with C-STORE (empty host: not sent).
        max_instances_per_study, max_bytes_per_study: a study over either is refused (C-STORE status A700).
        max_instances_per_association, max_bytes_per_association: likewise per association.
        tls_cert, tls_key, tls_ca: PEM files; with cert and key the SCP speaks TLS (with a CA it requires
            client certificates signed by it).
        metrics_port: Prometheus ``/metrics`` port (0: off).
        log_format, log_level: as ``dqe serve`` (``json`` or ``text``; ``INFO``, ...).
        series_rules, segment_map: JSON files overriding the packaged series rules / segment map.
        model_id, providers, precision, backend, intra_op_threads: the engine (:class:`EngineSettings`).
    """

    ae_title: str = "DQE"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aes: tuple[str, ...] = ()
    spool_dir: str = "dqe-spool"
    quiet_s: float = 10.0
    dest_host: str = ""
    dest_port: int = 104
    dest_ae: str = "PACS"
    max_instances_per_study: int = 4096
    max_bytes_per_study: int = 2 * 1024 * MIB
    max_instances_per_association: int = 8192
    max_bytes_per_association: int = 4 * 1024 * MIB
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    log_format: str = "json"
    log_level: str = "INFO"
    metrics_port: int = 0
    series_rules: str = ""
    segment_map: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= len(self.ae_title) <= 16:
            raise InvalidInput(f"ae_title {self.ae_title!r}; expected 1-16 characters", field="ae_title")
        if self.quiet_s <= 0:
            raise InvalidInput(f"quiet_s is {self.quiet_s}; expected > 0", field="quiet_s")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidInput("tls_cert and tls_key go together", field="tls_cert")
        for name in ("max_instances_per_study", "max_bytes_per_study", "max_instances_per_association",
                     "max_bytes_per_association"):  # fmt: skip
            if getattr(self, name) < 0:
                raise InvalidInput(
                    f"{name} is {getattr(self, name)}; expected >= 0 (0 = no limit)", field=name
                )
