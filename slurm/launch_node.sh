#!/bin/bash
# slurm/launch_node.sh RECIPE.yaml [section.key=value ...] - run by slurm/train.sbatch on every node
# (srun, one task per node): one `accelerate launch` that starts this node's training processes.
# Each node expands its own SLURM_NODEID here, which becomes its --machine_rank.
#
# Signals: SLURM delivers USR1 (train.sbatch's trap: `scancel --signal=USR1`) and TERM (scancel,
# time limit) to EVERY process of the step. The training processes catch both, finish the step,
# checkpoint and exit 75. The launcher must neither die from USR1 (its default action, which would
# end the step and get the trainers killed mid-checkpoint) nor forward TERM a second time (the
# trainers treat a second signal as "exit now"): it ignores both, and torchrun is told not to
# install its own TERM handler. The trainers replace the inherited "ignore" with their handler.
set -uo pipefail
: "${P2P_VENV:?}" "${P2P_ACCEL_CONFIG:?}" "${P2P_HEAD:?}" "${P2P_PORT:?}" "${P2P_PROCS_PER_NODE:?}" "${P2P_NUM_NODES:?}"
node=${SLURM_NODEID:?not inside srun}
cd "${P2P_REPO:-.}" || exit 2
if [ -n "${P2P_SETUP:-}" ]; then
    eval "$P2P_SETUP" || { echo "[node $node] P2P_SETUP failed" >&2; exit 2; }
fi
trap '' USR1 TERM
export PET_SIGNALS_TO_HANDLE=SIGINT,SIGHUP,SIGQUIT
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${P2P_SHUTDOWN_TIMEOUT:-110}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_PER_TASK:-1} / P2P_PROCS_PER_NODE > 0 ? ${SLURM_CPUS_PER_TASK:-1} / P2P_PROCS_PER_NODE : 1 ))}
echo "[node $node $(hostname)] accelerate launch: machine $node of $P2P_NUM_NODES, $P2P_PROCS_PER_NODE process(es), head $P2P_HEAD:$P2P_PORT"
exec "$P2P_VENV/bin/accelerate" launch --config_file "$P2P_ACCEL_CONFIG" \
    --num_machines "$P2P_NUM_NODES" --machine_rank "$node" \
    --num_processes $(( P2P_NUM_NODES * P2P_PROCS_PER_NODE )) \
    --main_process_ip "$P2P_HEAD" --main_process_port "$P2P_PORT" \
    -m p2p_dist.train --config "$@"
