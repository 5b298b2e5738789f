#!/usr/bin/env bash
# One node's share of a multi-node recipe run: `cifd-clip launch` with torchrun's c10d rendezvous.
# slurm.sbatch runs it once per node (srun --ntasks-per-node 1); without SLURM, run it on every node with
# NNODES, NODE_RANK and RDZV_ENDPOINT set (the output folder must be on a file system all nodes share):
#   NNODES=2 NODE_RANK=0 RDZV_ENDPOINT=node0:29500 GPUS_PER_NODE=4 recipes/launch/node.sh RECIPE.yaml
# Any further arguments go to `cifd-clip launch` (e.g. --steps cifd bench, --var out=/shared/runs/x).
set -euo pipefail
recipe=${1:?usage: node.sh RECIPE.yaml [cifd-clip launch options]}
shift
nnodes=${NNODES:-${SLURM_JOB_NUM_NODES:-1}}
node_rank=${NODE_RANK:-${SLURM_NODEID:-0}}
gpus=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
endpoint=${RDZV_ENDPOINT:?set RDZV_ENDPOINT=HOST:PORT, the first node (slurm.sbatch sets it)}
job=${RDZV_ID:-${SLURM_JOB_ID:-cifd-clip}}
cli=${CIFD_CLIP:-cifd-clip}
exec $cli launch --recipe "$recipe" --nnodes "$nnodes" --node-rank "$node_rank" --nproc-per-node "$gpus" \
    --rdzv-endpoint "$endpoint" --rdzv-id "$job" "$@"
