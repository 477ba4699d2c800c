# syntax=docker/dockerfile:1
# Peephole serving image: ONNX Runtime + FastAPI, no PyTorch.
#
#   docker build --network host -t peephole:latest .                       # CPU
#   docker build --network host --build-arg VARIANT=gpu \
#       --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 -t peephole:gpu .
#
# VARIANT=gpu installs onnxruntime-gpu in place of onnxruntime; it needs a CUDA runtime base
# image (BASE_IMAGE) with cuDNN, and `--gpus all` (or compose's `gpu` profile) at run time.
ARG BASE_IMAGE=debian:bookworm-slim

# ---- build stage: a virtual environment with the serving dependencies only (the serve extra)
FROM ${BASE_IMAGE} AS build
ARG VARIANT=cpu
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates \
 && update-ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY app ./app
COPY peephole ./peephole
# constraints.txt pins every serving dependency to the versions tested together
# (refresh: python .ci/constraints.py > constraints.txt), so a rebuild is the same image.
RUN pip install --upgrade pip setuptools wheel \
 && pip install -c constraints.txt '.[serve]' \
 && if [ "$VARIANT" = "gpu" ]; then \
      ort=$(python -c 'from importlib.metadata import version; print(version("onnxruntime"))') \
      && pip uninstall -y onnxruntime && pip install -c constraints.txt "onnxruntime-gpu==$ort"; fi \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
 && rm -rf /opt/venv/lib/python3*/site-packages/pip /opt/venv/lib/python3*/site-packages/setuptools

# ---- runtime stage -----------------------------------------------------------------
# ORT_DISABLE_TELEMETRY=1: ONNX Runtime's 1DS telemetry off (no uploader, no device id written
# to a home the non-root user cannot write); set it to 0 at run time to turn it back on.
FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin peephole
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
COPY --chown=peephole:peephole models ./models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PEEPHOLE_HOST=0.0.0.0 \
    PEEPHOLE_PORT=8000 \
    PEEPHOLE_GRPC_PORT=8001 \
    PEEPHOLE_MODEL_REPOSITORY=/srv/models \
    ORT_DISABLE_TELEMETRY=1
USER peephole
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD python3 -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('PEEPHOLE_PORT','8000'), timeout=2)" || exit 1
CMD ["python3", "-m", "app"]
