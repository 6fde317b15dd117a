#!/bin/bash
#SBATCH --job-name=simai-bench
#SBATCH --account=MyProject
#SBATCH --partition=regular
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=01:00:00
#SBATCH --exclusive
# Written by simai-bench jobscript: profile slurm, 2 nodes x 4 ranks. Regenerate rather than edit.
set -euo pipefail

NODES=2
RANKS_PER_NODE=4
WORKDIR=/opt/simai-bench
RESULTS_ROOT=/opt/simai-bench/results/jobs
PYTHON="${SIMAI_PYTHON:-$WORKDIR/.venv/bin/python}"
LAUNCHER="${SIMAI_LAUNCHER:-srun}"

got="${SLURM_JOB_NUM_NODES:?SLURM_JOB_NUM_NODES is not set: submit this script with sbatch}"
job="${SLURM_JOB_ID:?SLURM_JOB_ID is not set: submit this script with sbatch}"
if [ "$got" -ne "$NODES" ]; then
  echo "simai-bench: the job has $got nodes, the script was written for $NODES" >&2
  exit 2
fi
results="$RESULTS_ROOT/$job"
mkdir -p "$results"
export SIMAI_PROFILE=slurm
cd "$WORKDIR"

# One device per rank: CUDA_VISIBLE_DEVICES = local rank % 4.
# shellcheck disable=SC2016  # expanded by each rank's shell, not here
GPU=(bash -c 'local_rank=${PALS_LOCAL_RANKID:-${SLURM_LOCALID:-${MPI_LOCALRANKID:-${OMPI_COMM_WORLD_LOCAL_RANK:-0}}}}; export CUDA_VISIBLE_DEVICES=$((local_rank % 4)); exec "$@"' simai-gpu-affinity)

status=0
"$LAUNCHER" -N "$NODES" -n "$((NODES * RANKS_PER_NODE))" --ntasks-per-node "$RANKS_PER_NODE" --cpus-per-task 16 --cpu-bind=cores \
  "${GPU[@]}" "$PYTHON" -m pytest benchmarks/micro -m 'micro and redis' --simai-sizes 1KiB,1MiB --benchmark-json "$results/bench.json" \
  2>&1 | tee "$results/pytest.log" || status=$?
if [ "$status" -ne 0 ]; then
  echo "simai-bench: pytest exited with $status; log: $results/pytest.log" >&2
  exit "$status"
fi
echo "simai-bench: results in $results (simai-bench show $results/bench.json)"
