# tinyforge: the same install as the README (`make` creates .venv and `pip install -e '.[dev]'`),
# with the CPU build of torch 2.13.0 installed first so that pip does not fetch a CUDA build.
#   docker build -t tinyforge .
# Ascend: build on a CANN base image and add the npu extra (torch-npu needs CANN at import time):
#   docker build --build-arg BASE_IMAGE=<a CANN 8.x image with Python 3.11> \
#                --build-arg TORCH_INDEX=https://pypi.org/simple --build-arg EXTRAS=dev,npu -t tinyforge:ascend .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=dev
ENV PYTHONUNBUFFERED=1 TINYFORGE_HOME=/var/lib/tinyforge PATH=/app/.venv/bin:$PATH

RUN apt-get update && apt-get install -y --no-install-recommends make util-linux \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml Makefile ./
RUN python3.11 -m venv .venv && .venv/bin/pip install -q --upgrade pip \
    && .venv/bin/pip install -q torch==2.13.0 --index-url ${TORCH_INDEX}
COPY . .
RUN .venv/bin/pip install -q -e ".[${EXTRAS}]" && touch .venv/bin/.installed

VOLUME /var/lib/tinyforge
EXPOSE 8080
CMD ["tinyforge", "serve", "--host", "0.0.0.0", "--port", "8080"]
