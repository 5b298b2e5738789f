# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out

.PHONY: setup demo test test-fast test-recipes test-study bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision are pinned for development (see DEVELOPERS.md); the package itself accepts any torch>=2.1
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m cifd_clip demo --out $(DEMO_OUT)

# Two workers (the machine's two cores; every test process runs torch on one thread); a test module's tests
# stay on one worker so that they share its fixtures. --durations shows the slow ones.
PYTEST := $(PY) -m pytest -q -n 2 --dist loadfile --durations=15

test: setup
	$(PYTEST) -m "not recipes and not study"

test-fast: setup
	$(PYTEST) -m "not slow and not recipes and not study"

# Every paper recipe's smoke run, end to end through its launchers (several minutes; CI runs it after `test`).
# The three ViT-L-14 recipes share a teacher cache, so they stay on one worker (xdist_group).
test-recipes: setup
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=10 -m recipes tests/test_launch.py

# The study script end to end at quick sizes (it starts a dozen stage processes; CI runs it after `test`).
test-study: setup
	$(PY) -m pytest -q --durations=5 -m study tests/test_study.py

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
