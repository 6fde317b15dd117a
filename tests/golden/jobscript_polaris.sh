#!/bin/bash
#PBS -N simai-bench
#PBS -A MyProject
#PBS -q debug
#PBS -l select=4:system=polaris
#PBS -l walltime=01:00:00
#PBS -l filesystems=home:eagle
#PBS -l place=scatter
#PBS -j oe
# Written by simai-bench jobscript: profile polaris, 4 nodes x 4 ranks. Regenerate rather than edit.
set -euo pipefail

NODES=4
RANKS_PER_NODE=4
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
export SIMAI_PROFILE=polaris
cd "$WORKDIR"

# One device per rank: CUDA_VISIBLE_DEVICES = local rank % 4.
# shellcheck disable=SC2016  # expanded by each rank's shell, not here
GPU=(bash -c 'local_rank=${PALS_LOCAL_RANKID:-${SLURM_LOCALID:-${MPI_LOCALRANKID:-${OMPI_COMM_WORLD_LOCAL_RANK:-0}}}}; export CUDA_VISIBLE_DEVICES=$((local_rank % 4)); exec "$@"' simai-gpu-affinity)

status=0
"$LAUNCHER" -n "$((NODES * RANKS_PER_NODE))" --ppn "$RANKS_PER_NODE" --depth 8 --cpu-bind depth --hostfile "$nodefile" \
  "${GPU[@]}" "$PYTHON" -m pytest benchmarks/micro -m 'micro and redis' --simai-sizes 1KiB,1MiB --benchmark-json "$results/bench.json" \
  2>&1 | tee "$results/pytest.log" || status=$?
if [ "$status" -ne 0 ]; then
  echo "simai-bench: pytest exited with $status; log: $results/pytest.log" >&2
  exit "$status"
fi
echo "simai-bench: results in $results (simai-bench show $results/bench.json)"
