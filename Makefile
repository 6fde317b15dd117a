# SimAI-Bench: `make bench` and `make test` set the machine up on first use (`make setup`).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
STAMP := $(VENV)/.simai-setup
EXTRAS ?= mpi,gnn,smartsim,adios2,dragon,dev
# ranks for the MPI test pass, ranks for `make bench`, seconds before a hung MPI job is killed
NP ?= 4
BENCH_NP ?= 2
MPI_TIMEOUT ?= 1200
RESULTS ?= results

.PHONY: setup system-deps bench test lint clean

setup: system-deps $(STAMP)

# redis-server from Debian when it is missing and we are root; otherwise say what to do.
system-deps:
	@if ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing redis-server (Debian)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "NOTE: redis-server not found: install Redis >= 7 (e.g. sudo apt-get install redis-server)" \
	         "or put it on PATH; the redis backend is skipped until then" >&2; \
	  fi; \
	fi

$(STAMP): pyproject.toml Makefile native/sstensor/sstensor.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --progress-bar off -e ".[$(EXTRAS)]"
	# torch-cluster has no wheel on PyPI: build it once (7-20 min here; pip caches the wheel, later
	# installs take seconds). Without it, GNN graphs come from SciPy's cKDTree (same edges).
	printf '[build_ext]\nparallel = 2\n' > $(VENV)/build_ext.cfg
	DIST_EXTRA_CONFIG=$(VENV)/build_ext.cfg CXXFLAGS=-g0 FORCE_ONLY_CPU=1 \
	  $(PY) -m pip install --quiet --progress-bar off --no-build-isolation torch-cluster==1.6.3 \
	  || echo "NOTE: torch-cluster did not build; GNN graphs use SciPy's cKDTree (same edges)" >&2
	# SmartSim needs a RedisAI module that only `smart build` (internet) makes: build the stand-in.
	bash native/sstensor/build.sh || echo "NOTE: no C compiler: the smartsim backend is skipped" >&2
	$(PY) -c "from simai_core.staging.smartsim import install_redis_binaries as i; i()" \
	  || echo "NOTE: no redis-server to give SmartSim: the smartsim backend is skipped" >&2
	touch $@

bench: setup
	mkdir -p $(RESULTS)
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n $(BENCH_NP) $(PY) -m pytest benchmarks/micro -q \
	  -m "micro and (redis or nodelocal)" --benchmark-json $(RESULTS)/micro.json
	@echo "results: $(RESULTS)/micro.json (compare two runs: $(VENV)/bin/simai-bench compare A.json B.json)"

lint: setup
	$(PY) -m ruff check simai_core tests benchmarks conftest.py
	$(PY) -m mypy

test: setup lint
	mkdir -p $(RESULTS)
	$(PY) -m pytest tests -m "not dragon"
	# Dragon apart: its DDict orchestrator spins a core for the rest of a session, and SIGINT (not
	# SIGTERM) lets it tear its runtime down if the step runs out of time.
	setsid timeout -s INT -k 30 600 $(PY) -m pytest tests -m dragon
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n $(NP) $(PY) -m pytest --with-mpi -q \
	  tests/test_staging_contract.py tests/test_workflow_mpi.py
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n $(NP) $(PY) -m pytest benchmarks/micro -q \
	  -m "micro and (redis or nodelocal or smartsim or adios2)" --simai-sizes 1KiB,1MiB --simai-rounds 3 \
	  --benchmark-json $(RESULTS)/ci-micro-np$(NP).json
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n $(NP) $(PY) -m pytest benchmarks/mini -q -m "mini and adios2" -k mlp \
	  --simai-problem-size debug --simai-step-time 0.1 --benchmark-json $(RESULTS)/ci-mini-sst-np$(NP).json

clean:
	rm -rf $(RESULTS) .benchmarks
