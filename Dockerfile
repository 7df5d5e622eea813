# tinyforge image, in two stages: `build` installs torch and the project into /opt/venv; `runtime` copies
# that venv and the source (an editable install: migrations, alembic.ini and data/sample stay beside the
# packages at /app) onto a fresh base and runs as an unprivileged user. No dev extras (pytest, playwright,
# schemathesis, lm-eval) in the image.
#   docker build -t tinyforge .                                    # CPU build of torch
# NVIDIA (docker compose --profile nvidia): torch from PyPI (CUDA wheels) and the cuda extra (Triton, Liger):
#   docker build --build-arg TORCH_INDEX=https://pypi.org/simple --build-arg EXTRAS=cuda -t tinyforge:cuda .
# Ascend: build on a CANN base image and add the npu extra (torch-npu needs CANN at import time):
#   docker build --build-arg BASE_IMAGE=ascendai/cann:8.5.0-910b-ubuntu22.04-py3.11 \
#                --build-arg TORCH_INDEX=https://pypi.org/simple --build-arg EXTRAS=npu -t tinyforge:ascend .
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# a compiler for any dependency that builds from source on this platform
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv && /opt/venv/bin/pip install -q --upgrade pip \
    && /opt/venv/bin/pip install -q torch==2.13.0 --index-url ${TORCH_INDEX}
WORKDIR /app
# dependencies first (a layer that survives source edits), then the project itself
COPY pyproject.toml README.md ./
RUN mkdir -p tinyforge && touch tinyforge/__init__.py \
    && /opt/venv/bin/pip install -q ".${EXTRAS:+[${EXTRAS}]}" && /opt/venv/bin/pip uninstall -q -y tinyforge
COPY . .
RUN /opt/venv/bin/pip install -q --no-deps -e .

FROM ${BASE_IMAGE} AS runtime
# gcc + libc headers: Triton compiles its launcher stubs with the system C compiler at run time (CUDA
# workers); g++: DeepSpeed JIT-builds C++ ops at first use (its shared-memory all-reduce under ZeRO on CPU
# workers); util-linux: the worker's process-group tools
RUN apt-get update && apt-get install -y --no-install-recommends gcc g++ libc6-dev util-linux \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/tinyforge --create-home tinyforge
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=root:root /app /app
ENV PYTHONUNBUFFERED=1 TINYFORGE_HOME=/var/lib/tinyforge PATH=/opt/venv/bin:$PATH
WORKDIR /app
USER tinyforge
VOLUME /var/lib/tinyforge
EXPOSE 8080
CMD ["tinyforge", "serve", "--host", "0.0.0.0", "--port", "8080"]
