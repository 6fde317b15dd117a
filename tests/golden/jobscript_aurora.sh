#!/bin/bash
#PBS -N simai-bench
#PBS -A MyProject
#PBS -q debug
#PBS -l select=2
#PBS -l walltime=01:00:00
#PBS -l filesystems=home:flare
#PBS -l place=scatter
#PBS -j oe
# Written by simai-bench jobscript: profile aurora, 2 nodes x 12 ranks. Regenerate rather than edit.
set -euo pipefail

module load frameworks

NODES=2
RANKS_PER_NODE=12
WORKDIR=/opt/simai-bench
RESULTS_ROOT=/opt/simai-bench/results/jobs
PYTHON="${SIMAI_PYTHON:-$WORKDIR/.venv/bin/python}"
LAUNCHER="${SIMAI_LAUNCHER:-mpiexec}"

nodefile="${PBS_NODEFILE:?PBS_NODEFILE is not set: submit this script with qsub}"
got=$(wc -l < "$nodefile")
job="${PBS_JOBID:?PBS_JOBID is not set: submit this script with qsub}"
job="${job%%.*}"
if [ "$got" -ne "$NODES" ]; then
  echo "simai-bench: the job has $got nodes, the script was written for $NODES" >&2
  exit 2
fi
results="$RESULTS_ROOT/$job"
mkdir -p "$results"
export SIMAI_PROFILE=aurora
export ZE_FLAT_DEVICE_HIERARCHY=FLAT
cd "$WORKDIR"

# One device per rank: ZE_AFFINITY_MASK = local rank % 12.
# shellcheck disable=SC2016  # expanded by each rank's shell, not here
GPU=(bash -c 'local_rank=${PALS_LOCAL_RANKID:-${SLURM_LOCALID:-${MPI_LOCALRANKID:-${OMPI_COMM_WORLD_LOCAL_RANK:-0}}}}; export ZE_AFFINITY_MASK=$((local_rank % 12)); exec "$@"' simai-gpu-affinity)

status=0
"$LAUNCHER" -n "$((NODES * RANKS_PER_NODE))" --ppn "$RANKS_PER_NODE" --depth 8 --cpu-bind depth --hostfile "$nodefile" \
  "${GPU[@]}" "$PYTHON" -m pytest benchmarks/micro -m 'micro and redis' --simai-sizes 1KiB,1MiB --benchmark-json "$results/bench.json" \
  2>&1 | tee "$results/pytest.log" || status=$?
if [ "$status" -ne 0 ]; then
  echo "simai-bench: pytest exited with $status; log: $results/pytest.log" >&2
  exit "$status"
fi
echo "simai-bench: results in $results (simai-bench show $results/bench.json)"
