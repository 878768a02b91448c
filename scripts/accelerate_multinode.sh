#!/usr/bin/env bash
# One training job over several nodes of a SLURM allocation (launch.num_machines > 1):
# one `accelerate launch` per node through srun, each with its node's rank, the first
# node of the allocation as the rendezvous host (c10d) and $MASTER_PORT (set by
# creditbench-place; default 29500) as its port. The training rule runs
#   scripts/accelerate_multinode.sh MACHINES PROCESSES CONFIG_FILE -- creditbench.cli args...
# PROCESSES counts the processes of all nodes (accelerate's --num_processes).
set -euo pipefail
if [[ $# -lt 4 || $4 != "--" ]]; then
    echo "usage: $0 MACHINES PROCESSES ACCELERATE_CONFIG -- ARGS..." >&2
    exit 2
fi
machines=$1 processes=$2 config=$3
shift 4
if [[ -z ${SLURM_JOB_NODELIST:-} ]]; then
    echo "$0: launch.num_machines is $machines: this needs a SLURM allocation of that many" \
        "nodes (run through experiments/profiles/slurm); no SLURM_JOB_NODELIST here" >&2
    exit 2
fi
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
port=${MASTER_PORT:-29500}
# $SLURM_NODEID is read inside each srun task (single quotes), so each node gets its own
exec srun --nodes="$machines" --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c \
    'exec accelerate launch --num_machines "$1" --num_processes "$2" \
        --machine_rank "$SLURM_NODEID" --main_process_ip "$3" --main_process_port "$4" \
        --rdzv_backend c10d --config_file "$5" -m creditbench.cli "${@:6}"' \
    multinode "$machines" "$processes" "$head" "$port" "$config" "$@"
