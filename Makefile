# medserve — `make help` lists the targets. `make demo` and `make test` create .venv themselves.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medserve-installed
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu'
TORCH_PIP_ARGS ?=
# Extra arguments for `make demo`, e.g. ARGS=--keep
ARGS ?=
# .venv/bin first on PATH: the tests and recipes find the helm (and kubectl) that `make helm` put there.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help system-deps setup helm demo test lint typecheck pytest crds monitoring chart images lock bench unit test-envtest kind-up test-e2e clean

help: ## list the targets
	@echo "usage: make TARGET"
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

system-deps: ## install the missing system packages (root + apt-get), else say exactly what to install
	.ci/system-deps

setup: system-deps $(STAMP) ## system packages, then .venv (system python3): torch==2.13.0 first, then the project

# torch goes in first and on its own: installing it as a dependency of the project would let pip pick
# whatever build the index prefers; the project then finds the requirement already satisfied.
# Both installs take their versions from constraints.txt, as the images do.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || { echo "creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@.ci/install-tools $(BIN) || echo "setup: helm/kubectl could not be installed; the tests needing them skip"
	@touch $@

helm: ## put helm (and kubectl, if missing) into .venv/bin unless on PATH (used by setup and .ci/run)
	.ci/install-tools $(BIN)

demo: setup ## run the whole system on loopback: emulator, MLflow, operator, example model (ARGS=--keep)
	$(BIN)/medserve sandbox $(ARGS)

test: setup lint typecheck pytest ## lint, typecheck, then the unit, integration and e2e tiers

lint: $(STAMP) ## ruff and the import-layering contracts
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: $(STAMP) ## mypy --strict over the operator, the runtime, the contract and the sandbox
	$(BIN)/mypy

unit: $(STAMP) ## the unit tier alone (no servers; about 30 s)
	$(BIN)/pytest tests/operator/unit tests/runtime/unit tests/sandbox/unit

pytest: $(STAMP)
	$(BIN)/pytest tests

crds: $(STAMP) ## regenerate crds/*.yaml (and the chart's copy) from the API models
	$(BIN)/medserve crds

monitoring: $(STAMP) ## regenerate the chart's alert rules, Grafana dashboards and argocd-cm snippet
	$(BIN)/python -m medserve_operator.tools.monitoring

chart: $(STAMP) ## helm lint and helm template charts/medserve (when helm is found)
	@if ! command -v helm >/dev/null; then echo "chart: no helm on PATH or in $(BIN) (run 'make helm'); skipped"; \
	else set -x; helm lint charts/medserve && helm template medserve charts/medserve >/dev/null; fi

images: ## build the operator, runtime and training images (podman/buildah; .ci/build-images) and print their sizes
	.ci/system-deps images
	.ci/build-images

lock: $(STAMP) ## rewrite constraints.txt from the packages now in .venv
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^#'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

bench: $(STAMP) ## operator scale benchmark against the emulator (200 ModelDeployments)
	$(BIN)/python benchmarks/operator_scale.py --n 200

# The integration tests that take a cluster, against a real control plane from $(KUBEBUILDER_ASSETS)
# (kube-apiserver, etcd, optionally kube-controller-manager; `setup-envtest use -p path`); each is
# skipped, with the reason, where the binaries are missing.
ENVTEST_TESTS ?= tests/operator/integration tests/sandbox/integration/test_emulator.py \
	tests/sandbox/integration/test_sandbox.py
test-envtest: $(STAMP) ## the integration tests against a real kube-apiserver from $KUBEBUILDER_ASSETS
	MEDSERVE_ENVTEST=1 $(BIN)/pytest $(ENVTEST_TESTS)

kind-up: ## create the local kind cluster for the e2e tier (needs Docker and kind)
	kind create cluster --config kind-config.yaml

test-e2e: $(STAMP) ## the e2e tier on a real kind cluster (skipped without Docker and kind)
	$(BIN)/pytest -m kind tests/e2e

clean: ## remove the sandbox's state and the caches (keeps .venv)
	rm -rf .sandbox .pytest-kind .pytest_cache .mypy_cache .ruff_cache .hypothesis .import_linter_cache build
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
