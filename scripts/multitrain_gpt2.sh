#!/usr/bin/env bash
# Train GPT-2 on several GPUs / nodes with FSDP2 through torchrun: the same trainer as train_gpt2.sh.
# Run this script on every node (NODE_RANK 0..NNODES-1). Edit the variables below, or set them in the environment.
#
# RESUME=true continues the run in OUT_DIR with the checkpoint's settings, as in train_gpt2.sh: the defaults below
# are a new run's, and a resumed run passes only the variables set in the environment (the trainer applies and
# announces each one that differs from the checkpoint's). E.g. RESUME=true MAX_STEPS=40000 on every node trains
# the run further. A sharded checkpoint resumes with the same number of processes. See docs/training.md.
set -euo pipefail
# Paths you set are relative to the folder you run this from; the defaults below are the repo's folders.
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # python -m gpt2 from any folder
. "$REPO/scripts/lib/settings.sh"              # before the defaults: notes the variables the environment sets

NNODES=${NNODES:-1}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}            # GPUs per node
NODE_RANK=${NODE_RANK:-0}
RDZV_ENDPOINT=${RDZV_ENDPOINT:-localhost:29500} # host:port of node 0
RDZV_ID=${RDZV_ID:-gpt2-softplus}

DATA_DIR=${DATA_DIR:-$REPO/data/tokens}
TOKENIZER=${TOKENIZER:-$REPO/data/tokenizer.json}
OUT_DIR=${OUT_DIR:-$REPO/runs/gpt2-softplus-fsdp}
RESUME=${RESUME:-false}                        # true: continue OUT_DIR from its newest checkpoint (see above)

PRESET=${PRESET:-gpt2}
ATTENTION=${ATTENTION:-softplus}               # softmax | softmax_naive | softplus
POSITION=${POSITION:-learned}                  # learned | none | alibi | rope (all but learned read past SEQ_LEN)
LENGTH_BASE=${LENGTH_BASE:-none}               # scale query i's scores by log(n_i)/log(LENGTH_BASE); none: off
SEQ_LEN=${SEQ_LEN:-1024}
BATCH_SIZE=${BATCH_SIZE:-16}                   # per GPU micro-batch
ACCUM_STEPS=${ACCUM_STEPS:-4}                  # global batch = BATCH_SIZE * ACCUM_STEPS * NNODES * NPROC_PER_NODE
MAX_STEPS=${MAX_STEPS:-20000}
LR=${LR:-6e-4}
MIN_LR=${MIN_LR:-6e-5}
WARMUP_STEPS=${WARMUP_STEPS:-700}
PRECISION_FLAGS=${PRECISION_FLAGS-auto}        # auto: "--amp_bf16 --allow_tf32" on GPUs, fp32 on CPUs (gloo)
                                               # (on resume: the checkpoint's precision); or any of --amp_bf16
                                               # --bf16 --allow_tf32 --compile ("": fp32 / on resume, the
                                               # checkpoint's)
EVAL_EVERY=${EVAL_EVERY:-250}
EVAL_BATCHES=${EVAL_BATCHES:-50}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-1000}
REPORT_TO=${REPORT_TO:-none}                   # none | tensorboard | wandb | tensorboard,wandb: trackers that
                                               # mirror metrics.jsonl (on resume: the checkpoint's)

if [ "$PRECISION_FLAGS" = auto ]; then PRECISION_FLAGS=$(auto_precision_flags); fi

settings --preset PRESET --attention ATTENTION --position POSITION --length_base LENGTH_BASE \
  --seq_len SEQ_LEN --batch_size BATCH_SIZE --accum_steps ACCUM_STEPS --max_steps MAX_STEPS \
  --lr LR --min_lr MIN_LR --warmup_steps WARMUP_STEPS \
  --eval_every EVAL_EVERY --eval_batches EVAL_BATCHES --checkpoint_every CHECKPOINT_EVERY \
  --report_to REPORT_TO

# exec: torchrun replaces this shell, so a SIGTERM sent to the script reaches it and its workers, which save a
# checkpoint before exiting.
# shellcheck disable=SC2086
exec torchrun --nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" --node_rank "$NODE_RANK" \
  --rdzv_backend c10d --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "$RDZV_ID" \
  -m gpt2 train \
  --data_dir "$DATA_DIR" --tokenizer "$TOKENIZER" --out_dir "$OUT_DIR" --resume "$RESUME" \
  "${SETTINGS[@]}" $PRECISION_FLAGS "$@"
