# SimAI-Bench: `make bench` and `make test` set the machine up on first use (`make setup`).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MPIEXEC := $(VENV)/bin/mpiexec
CORE := $(VENV)/.simai-core
CLUSTER := $(VENV)/.simai-torch-cluster
EXTRAS ?= mpi,gnn,smartsim,adios2,dragon,full,steering,dev
# ranks for the MPI test pass, ranks for `make bench`, seconds before a hung MPI job is killed
NP ?= 4
BENCH_NP ?= 2
MPI_TIMEOUT ?= 1200
RESULTS ?= results
# A slow step says what it does and how long it usually takes before it starts, and its time after.
TIMED = timed() { echo "==> $$1 (usually $$2)"; local t0=$$SECONDS; shift 2; "$$@"; local rc=$$?; \
	echo "    done in $$((SECONDS - t0)) s"; return $$rc; }; timed

.PHONY: setup setup-core system-deps bench test lint clean

# Everything: the core (what `make bench` needs) and torch-cluster for the GNN's graphs.
setup: system-deps $(CORE) $(CLUSTER)

# What the micro benchmarks need, without the torch-cluster build: `make bench` stops here.
setup-core: system-deps $(CORE)

# redis-server from Debian when it is missing and we are root; otherwise say what to do.
system-deps:
	@if ! command -v redis-server >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    $(TIMED) "installing redis-server (Debian)" "under a minute" \
	      bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null'; \
	  else \
	    echo "NOTE: redis-server not found: install Redis >= 7 (e.g. sudo apt-get install redis-server)" \
	         "or put it on PATH; the redis backend is skipped until then" >&2; \
	  fi; \
	fi

$(CORE): pyproject.toml Makefile native/sstensor/sstensor.c
	@if ! test -x $(PY); then $(TIMED) "creating $(VENV)" "a few seconds" $(PYTHON) -m venv $(VENV); fi
	@$(TIMED) "installing the Python packages (torch 2.13.0 CPU, MPICH, SmartSim, Dragon, ADIOS2, Devito, ...)" \
	  "2-4 min on a fresh machine, seconds when up to date" \
	  $(PY) -m pip install --quiet --progress-bar off -e ".[$(EXTRAS)]"
	@# SmartSim needs a RedisAI module that only `smart build` (internet) makes: build the stand-in.
	@bash native/sstensor/build.sh || echo "NOTE: no C compiler: the smartsim backend is skipped" >&2
	@$(PY) -c "from simai_core.staging.smartsim import install_redis_binaries as i; i()" \
	  || echo "NOTE: no redis-server to give SmartSim: the smartsim backend is skipped" >&2
	@touch $@

# torch-cluster has no wheel on PyPI: built once, then pip's cache installs it in seconds. Without
# it, GNN graphs come from SciPy's cKDTree (same edges). Only the GNN workflows use it.
$(CLUSTER): $(CORE)
	@printf '[build_ext]\nparallel = 2\n' > $(VENV)/build_ext.cfg
	@$(TIMED) "building torch-cluster once (pip prints nothing while it compiles)" \
	  "7-20 min on 2 cores; seconds when pip's cache has the wheel" \
	  env DIST_EXTRA_CONFIG=$(VENV)/build_ext.cfg CXXFLAGS=-g0 FORCE_ONLY_CPU=1 \
	  $(PY) -m pip install --quiet --progress-bar off --no-build-isolation torch-cluster==1.6.3 \
	  || echo "NOTE: torch-cluster did not build; GNN graphs use SciPy's cKDTree (same edges)" >&2
	@touch $@

bench: setup-core
	mkdir -p $(RESULTS)
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n $(BENCH_NP) $(PY) -m pytest benchmarks/micro -q \
	  -m "micro and (redis or nodelocal)" --benchmark-json $(RESULTS)/micro.json
	@$(VENV)/bin/simai-bench summary $(RESULTS)/micro.json --report $(RESULTS)/report

lint: setup-core
	$(PY) -m ruff check simai_core tests benchmarks conftest.py
	$(PY) -m mypy

test: setup lint
	mkdir -p $(RESULTS)
	$(PY) -m pytest tests -m "not dragon"
	# Dragon apart: its DDict orchestrator spins a core for the rest of a session, and SIGINT (not
	# SIGTERM) lets it tear its runtime down if the step runs out of time.
	setsid timeout -s INT -k 30 600 $(PY) -m pytest tests -m dragon --ignore tests/test_mpi_plumbing.py
	setsid timeout -s INT -k 30 600 $(PY) -m pytest tests/test_mpi_plumbing.py -m dragon
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n $(NP) $(PY) -m pytest --with-mpi -q \
	  tests/test_staging_contract.py tests/test_workflow_mpi.py
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n $(NP) $(PY) -m pytest benchmarks/micro -q \
	  -m "micro and (redis or nodelocal or smartsim or adios2)" --simai-sizes 1KiB,1MiB --simai-rounds 3 \
	  --simai-idle 0.1 --benchmark-json $(RESULTS)/ci-micro-np$(NP).json
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n $(NP) $(PY) -m pytest benchmarks/mini -q -m "mini and adios2" -k mlp \
	  --simai-problem-size debug --simai-step-time 0.1 --benchmark-json $(RESULTS)/ci-mini-sst-np$(NP).json
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n $(NP) $(PY) -m pytest benchmarks/full -q -m "full and nodelocal" \
	  -k "clustered and not streamed" --simai-full-size debug --benchmark-json $(RESULTS)/ci-full-np$(NP).json
	timeout $(MPI_TIMEOUT) $(MPIEXEC) -n $(NP) $(PY) -m pytest benchmarks/mini -q -m "steering and redis" \
	  --simai-steering-launchers pool,mpiexec --simai-steering-modes streaming --simai-steering-field-size 16KiB \
	  --simai-steering-seeds 0 --benchmark-json $(RESULTS)/ci-mini-steering-np$(NP).json

clean:
	rm -rf $(RESULTS) .benchmarks
