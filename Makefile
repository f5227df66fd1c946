# Two commands for a fresh machine: `make demo` and `make test`. Both set up .venv first, with the
# exact versions of requirements.lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-stamp
LOCK := requirements.lock
# the newest versions that pyproject.toml allows (make test-latest, make remake-lock); not in CI
LATEST := .venv-latest

.PHONY: setup test demo lint bench clean test-latest remake-lock

setup: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[crf,viz,dev]'
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/weaktr demo

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: setup
	$(BIN)/python benchmarks/bench_cam.py
	$(BIN)/python benchmarks/bench_seg.py
	$(BIN)/python benchmarks/bench_predict.py

# --upgrade-strategy eager: a dependency already in $(LATEST) moves to its newest release too
test-latest:
	@test -x $(LATEST)/bin/python || $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[crf,viz,tb,onnx,dev]'
	$(LATEST)/bin/python -m pytest -q

# A fresh $(LATEST), so no package that the new versions dropped stays in the lock; the lock's
# comment header is kept, and the lock is only written once the whole suite has passed.
remake-lock:
	rm -rf $(LATEST)
	$(MAKE) test-latest
	{ sed -n '/^#/!q;p' $(LOCK); $(LATEST)/bin/python -m pip freeze --all --exclude-editable; } >$(LOCK).new
	mv $(LOCK).new $(LOCK)

clean:
	rm -rf $(VENV) $(LATEST) runs .pytest_cache
