# Two commands do everything: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -r requirements.txt
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null  # pip's own byte-compiling uses one core
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo --workdir=workdirs/demo

# Two pytest workers (pytest-xdist) keep both cores busy; they share one XLA compilation
# cache for the session (tests/conftest.py). Times on quiet 2-core machines: README.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" -n 2

# The tests marked @pytest.mark.slow (full-length runs, end-to-end repeats); wall time not measured.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow -n 2

lint: $(STAMP)
	$(PY) -m ruff check eos_jax experiments tests benchmarks

bench: $(STAMP)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m benchmarks.step_time
	$(PY) -m benchmarks.ensemble_throughput

clean:
	rm -rf $(VENV) workdirs .pytest_cache
