# DQE gRPC service on NVIDIA GPUs (falls back to CPU when no GPU is visible).
#
#   docker build -t dqe-service .
#   docker run --gpus all -p 50051:50051 -p 9464:9464 --stop-timeout 40 dqe-service
#   docker run ... -v /data/cases:/data:ro -e DQE_ALLOWED_ROOTS=/data dqe-service     # server-side paths
#
# Stage 1 exports the ONNX model from the reference wheel (torch CPU, parity-checked by `dqe model export`);
# only the exported model directory reaches the runtime image, which has no torch.

# ------------------------------------------------------------------------------------------ model export
FROM python:3.11-slim AS export
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DQE_HOME=/opt/dqe
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY models ./models
COPY service ./service
COPY training ./training
# CPU torch from the PyTorch index (the version pinned in constraints.txt); everything else from PyPI.
RUN pip install --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
        -c constraints.txt ".[export]" \
 && dqe model export \
 && dqe model info

# ------------------------------------------------------------------------------------------ runtime
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS runtime
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin dqe
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY models ./models
COPY service ./service
# The package depends on the CPU onnxruntime wheel; onnxruntime-gpu provides the same module with the CUDA
# and TensorRT execution providers, so swap one for the other. isal = 2-3x faster gzip decoding.
RUN pip install . isal \
 && pip uninstall -y onnxruntime \
 && pip install "onnxruntime-gpu>=1.20" \
 && python -c "import onnxruntime as ort; print(ort.get_available_providers())" \
 && python -c "import dqe.service.serving.server, sys; assert 'torch' not in sys.modules"
# The exported model, owned by the service user (TensorRT writes its engine cache next to it).
COPY --from=export --chown=dqe:dqe /opt/dqe /opt/dqe
ENV DQE_HOME=/opt/dqe \
    DQE_HOST=0.0.0.0 \
    DQE_PORT=50051 \
    DQE_METRICS_PORT=9464 \
    DQE_LOG_FORMAT=json \
    DQE_GRACE_S=30
USER dqe
EXPOSE 50051 9464
# gRPC health protocol: exit 0 only once the model is loaded and warmed up (SERVING). Uses DQE_PORT and, when
# TLS is configured, DQE_TLS_* / DQE_HEALTHCHECK_* (see service/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-m", "dqe.service.healthcheck"]
# `dqe serve` is PID 1 and drains in-flight calls on SIGTERM within DQE_GRACE_S; give `docker stop` (or the
# pod's terminationGracePeriodSeconds) a little longer than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["dqe", "serve"]
