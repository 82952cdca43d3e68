# Two commands do everything: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo --workdir=workdirs/demo

# 679 tests: 12.5 min of CPU, 13.5 min wall on the project's 2-core machine shared with other
# jobs (tests/conftest.py gives the session one XLA compilation cache).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The tests marked @pytest.mark.slow (full-length runs, end-to-end repeats); wall time not measured.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(PY) -m ruff check eos_jax experiments tests benchmarks

bench: $(STAMP)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m benchmarks.step_time
	$(PY) -m benchmarks.ensemble_throughput

clean:
	rm -rf $(VENV) workdirs .pytest_cache
