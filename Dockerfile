# syntax=docker/dockerfile:1
# DQE gRPC service. The runtime installs the serving-only wheel (no extras: no torch, no training, no OpenVINO),
# exactly as `make test-shipped` installs and tests it.
#
# GPU (default; falls back to CPU when no GPU is visible):
#   docker build -t dqe-service .
#   docker run --gpus all -p 50051:50051 -p 9464:9464 --stop-timeout 40 dqe-service
# CPU only (smaller, no CUDA):
#   docker build -t dqe-service:cpu --build-arg BASE=python:3.11-slim --build-arg ORT=onnxruntime .
#   docker run -p 50051:50051 -p 9464:9464 --stop-timeout 40 dqe-service:cpu
# Server-side paths:
#   docker run ... -v /data/cases:/data:ro -e DQE_ALLOWED_ROOTS=/data dqe-service
#
# Stages: `wheel` builds the package wheel; `export` exports the ONNX model from the reference weights (torch
# CPU, parity-checked by `dqe model export`); `runtime` gets only the wheel and the exported model folder.

# Runtime base image: any image with python3 (>= 3.10) and python3-venv, Debian or Ubuntu based.
ARG BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
# ONNX Runtime distribution for the runtime: onnxruntime-gpu (CUDA/TensorRT providers) or onnxruntime (CPU).
ARG ORT=onnxruntime-gpu
ARG ORT_VERSION=1.20

# ------------------------------------------------------------------------------------------ wheel
FROM python:3.11-slim AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 SOURCE_DATE_EPOCH=1700000000
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY models ./models
COPY service ./service
COPY training ./training
RUN pip wheel --no-deps --wheel-dir /dist .

# ------------------------------------------------------------------------------------------ model export
FROM python:3.11-slim AS export
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DQE_HOME=/opt/dqe
WORKDIR /src
COPY constraints.txt ./
COPY --from=wheel /dist /dist
# CPU torch from the PyTorch index (the version pinned in constraints.txt); everything else from PyPI.
# The export extra is resolved from the same wheel the runtime installs.
RUN WHEEL="$(ls /dist/*.whl)" \
 && pip install --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
        -c constraints.txt "dqe-service[export] @ file://${WHEEL}" \
 && dqe model export \
 && dqe model info

# ------------------------------------------------------------------------------------------ runtime
FROM ${BASE} AS runtime
ARG ORT
ARG ORT_VERSION
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# python3 from the base image's distribution when it has none of its own (the CUDA images); the
# python:*-slim images already have one. Distribution package versions are not pinned (DL3008, see
# .hadolint.yaml).
RUN if ! command -v python3 >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
 && python3 -m venv /opt/venv \
 && groupadd --system --gid 10001 dqe \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin dqe
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY --from=wheel /dist /dist
# Exactly the serving-only install `make test-shipped` tests: the wheel, no extras (so no isal either: gzip
# decoding uses zlib). The wheel depends on the CPU onnxruntime; the GPU variant swaps it for onnxruntime-gpu
# (same module, plus the CUDA and TensorRT execution providers).
RUN pip install /dist/*.whl \
 && if [ "${ORT}" != "onnxruntime" ]; then \
        pip uninstall -y onnxruntime && pip install "${ORT}>=${ORT_VERSION}"; \
    fi \
 && rm -rf /dist \
 && python -c "import onnxruntime as ort; print(ort.get_available_providers())" \
 && python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'openvino')))" \
 && python -c "import dqe.service.serving.server, sys; assert 'torch' not in sys.modules" \
 && dqe serve --help > /dev/null
# The exported model, owned by the service user (TensorRT writes its engine cache next to it).
COPY --from=export --chown=10001:10001 /opt/dqe /opt/dqe
ENV DQE_HOME=/opt/dqe \
    DQE_HOST=0.0.0.0 \
    DQE_PORT=50051 \
    DQE_METRICS_PORT=9464 \
    DQE_LOG_FORMAT=json \
    DQE_GRACE_S=30
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 50051 9464
# gRPC health protocol: exit 0 only once the model is loaded and warmed up (SERVING). Uses DQE_PORT and, when
# TLS is configured, DQE_TLS_* / DQE_HEALTHCHECK_* (see service/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-m", "dqe.service.healthcheck"]
# `dqe serve` is PID 1 and drains in-flight calls on SIGTERM within DQE_GRACE_S; give `docker stop` (or the
# pod's terminationGracePeriodSeconds) a little longer than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["dqe", "serve"]
