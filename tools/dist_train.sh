#!/usr/bin/env bash
# Distributed training on one or more nodes with torchrun (upstream mmdet/mmseg's script).
#   tools/dist_train.sh CONFIG GPUS [tools/train.py args]
#   env: NNODES (1), NODE_RANK (0), PORT (29500), MASTER_ADDR (127.0.0.1), PYTHON (python)
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG GPUS [tools/train.py args]" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
