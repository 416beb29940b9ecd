"""The DICOM node: pynetdicom SCP (C-ECHO, C-STORE) -> :class:`~dqe.service.dicom_node.spool.Spool` ->
quiet-period scheduler -> :func:`~dqe.service.dicom_scoring.score_study` -> C-STORE of the SR (and KOS) to the
destination. Limits (instances and bytes per association and per study) answer C-STORE status A700 (out of
resources); a calling AE title not allowed is rejected at association. Logs on ``dqe.service.dicom_node``;
Prometheus counters in the node's own registry.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from typing import Any

from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dqe.models.dicom.study import StudyLimits
from dqe.models.errors import DQEError
from dqe.service.dicom_node.spool import FAILED, SCORED, SENT, Spool, StudyState
from dqe.service.dicom_scoring import DicomOptions, Scorer, load_study_paths, score_study
from dqe.service.settings import DicomNodeConfig

logger = logging.getLogger(__name__)
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
LABEL_MAP_SEG = "1.2.840.10008.5.1.4.1.1.66.7"
SCHEDULER_TICK_S = 0.25


class NodeMetrics:
    """Counters of one node (own registry, served on ``metrics_port`` when set)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter

        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("dqe_dicom_instances_received", "instances stored on arrival", registry=r)
        self.refused = Counter("dqe_dicom_refused", "C-STORE refused", ["reason"], registry=r)
        self.scored = Counter("dqe_dicom_studies_scored", "studies scored", ["verdict"], registry=r)
        self.failed = Counter(
            "dqe_dicom_studies_failed", "studies that could not be scored", ["kind"], registry=r
        )
        self.sent = Counter(
            "dqe_dicom_reports_sent", "SR/KOS C-STOREs to the destination", ["status"], registry=r
        )


class DicomNode:
    """One node; :meth:`start` listens and schedules, :meth:`stop` ends both."""

    def __init__(self, config: DicomNodeConfig, scorer: Scorer) -> None:
        self.config = config
        self.scorer = scorer
        self.spool = Spool(config.spool_dir)
        self.metrics = NodeMetrics()
        self.options = DicomOptions(config.series_rules or None, config.segment_map or None)
        # The node accepts instances up to its per-study limits; scoring reads the study under the same ones.
        self.limits = StudyLimits(
            max_instances=config.max_instances_per_study, max_bytes=config.max_bytes_per_study
        )
        self._assoc: dict[int, list[int]] = {}  # association id -> [instances, bytes]
        self._studies: dict[
            str, list[int]
        ] = {}  # study UID -> [instances, bytes] received (a resent one counts)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = config.port

    # ------------------------------------------------------------------ SCP
    def _ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        ae.add_supported_context(Verification)
        # 120 storage classes + Label Map SEG + Verification stay within DICOM's 128 presentation contexts
        for cx in [*StoragePresentationContexts[:120], build_context(LABEL_MAP_SEG)]:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax)
        ae.require_called_aet = True
        if self.config.allowed_calling_aes:
            ae.require_calling_aet = list(self.config.allowed_calling_aes)
        return ae

    def _ssl(self) -> ssl.SSLContext | None:
        c = self.config
        if not c.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(c.tls_cert, c.tls_key)
        if c.tls_ca:
            ctx.load_verify_locations(c.tls_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def _on_store(self, event: Any) -> int:
        c = self.config
        data = event.encoded_dataset()
        key = id(event.assoc)
        with self._lock:
            counts = self._assoc.setdefault(key, [0, 0])
            counts[0] += 1
            counts[1] += len(data)
            over_assoc = (
                c.max_instances_per_association and counts[0] > c.max_instances_per_association
            ) or (c.max_bytes_per_association and counts[1] > c.max_bytes_per_association)
        if over_assoc:
            self.metrics.refused.labels("association_limit").inc()
            logger.warning("C-STORE refused: association over its limit (%d instances, %d bytes)", *counts)
            return OUT_OF_RESOURCES
        ds = event.dataset
        study_uid, sop_uid = str(ds.get("StudyInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
        try:
            folder = self.spool.study_dir(study_uid)
        except ValueError:
            self.metrics.refused.labels("no_study_uid").inc()
            return CANNOT_UNDERSTAND
        with self._lock:
            held = self._studies.get(study_uid)
            if held is None:  # first instance since start: count what the spool already holds
                state = self.spool.state(folder) if folder.exists() else None
                held = self._studies[study_uid] = [state.instances, state.bytes] if state else [0, 0]
            if (c.max_instances_per_study and held[0] + 1 > c.max_instances_per_study) or (
                c.max_bytes_per_study and held[1] + len(data) > c.max_bytes_per_study
            ):
                self.metrics.refused.labels("study_limit").inc()
                logger.warning("C-STORE refused: study %s over its limit", study_uid)
                return OUT_OF_RESOURCES
            held[0] += 1  # counted before the write so that concurrent associations cannot overrun the limit
            held[1] += len(data)
        try:
            self.spool.store(study_uid, sop_uid, data)
        except (ValueError, OSError) as exc:
            with self._lock:
                held[0] -= 1
                held[1] -= len(data)
            self.metrics.refused.labels("store_failed").inc()
            logger.error("C-STORE of %s not stored: %s", sop_uid, exc)
            return OUT_OF_RESOURCES
        self.metrics.received.inc()
        return 0x0000

    def _on_release(self, event: Any) -> None:
        with self._lock:
            self._assoc.pop(id(event.assoc), None)

    def start(self) -> int:
        """Listen (non-blocking) and start the scheduler; returns the bound port."""
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_RELEASED, self._on_release),
            (evt.EVT_ABORTED, self._on_release),
        ]
        self._server = self._ae().start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=handlers, ssl_context=self._ssl()
        )
        self.port = int(self._server.server_address[1])
        if self.config.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(self.config.metrics_port, addr=self.config.host, registry=self.metrics.registry)
        self._thread = threading.Thread(target=self._schedule, name="dqe-dicom-scheduler", daemon=True)
        self._thread.start()
        logger.info("DICOM node %s listening on %s:%d", self.config.ae_title, self.config.host, self.port)
        return self.port

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # ------------------------------------------------------------------ scheduler
    def _due(self, s: StudyState, now: float) -> bool:
        if s.scored or s.instances == 0 or now - s.last_arrival < self.config.quiet_s:
            return False
        return s.failed_at is None or s.last_arrival > s.failed_at

    def _schedule(self) -> None:
        while not self._stop.wait(SCHEDULER_TICK_S):
            now = time.time()
            for s in self.spool.studies():
                if self._stop.is_set():
                    return
                try:
                    if self._due(s, now):
                        self.score(s)
                    elif s.scored and not s.sent and self.config.dest_host:
                        self.send(s.uid)
                except Exception:  # the scheduler must outlive one study's unexpected failure
                    logger.exception("study %s: unexpected error; left for the next tick", s.uid)

    def score(self, s: StudyState) -> None:
        """Score one quiet study; reports written, then marked scored (never scored again), then sent."""
        started = time.perf_counter()
        try:
            outcome = score_study(
                load_study_paths(sorted(s.folder.glob("*.dcm")), self.options, self.limits, case_id=s.uid),
                self.scorer,
            )
        except DQEError as exc:
            self.metrics.failed.labels(exc.kind).inc()
            self.spool.mark(s.uid, FAILED, {"code": exc.code, "kind": exc.kind, "message": exc.message})
            logger.warning("study %s not scored (%s): %s", s.uid, exc.kind, exc.message)
            return
        self.spool.write_out(s.uid, "sr.dcm", outcome.sr)
        if outcome.kos is not None:
            self.spool.write_out(s.uid, "kos.dcm", outcome.kos)
        gate = outcome.result.gate
        verdict = gate.verdict.value if gate is not None else "none"
        self.spool.mark(s.uid, SCORED, {"verdict": verdict, "mean_stars": outcome.result.mean_stars})
        self.metrics.scored.labels(verdict).inc()
        logger.info(
            "study %s scored: %.3f stars, %s (%.0f ms)",
            s.uid,
            outcome.result.mean_stars,
            verdict,
            (time.perf_counter() - started) * 1e3,
            extra={"event": "study_scored", "study": s.uid, "verdict": verdict},
        )
        if self.config.dest_host:
            self.send(s.uid)

    def send(self, study_uid: str) -> bool:
        """C-STORE the study's reports to the destination; marks the study sent when all succeeded."""
        c = self.config
        paths = self.spool.outputs(study_uid)
        ae = AE(ae_title=c.ae_title)
        datasets = [dcmread(p) for p in paths]
        for ds in datasets:
            ae.add_requested_context(ds.SOPClassUID)
        assoc = ae.associate(c.dest_host, c.dest_port, ae_title=c.dest_ae)
        if not assoc.is_established:
            self.metrics.sent.labels("no_association").inc()
            logger.warning("study %s: destination %s@%s:%d refused the association", study_uid, c.dest_ae,
                           c.dest_host, c.dest_port)  # fmt: skip
            return False
        ok = True
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(getattr(status, "Status", -1)) if status else -1
                ok = ok and code == 0
                self.metrics.sent.labels("ok" if code == 0 else f"{code:#06x}").inc()
        finally:
            assoc.release()
        if ok:
            self.spool.mark(study_uid, SENT, {"documents": [p.name for p in paths]})
            logger.info("study %s: %d reports sent to %s", study_uid, len(paths), c.dest_ae)
        return ok
