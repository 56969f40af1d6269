#!/usr/bin/env bash
# Train GPT-2 in one process (one GPU, or the CPU). Edit the variables below, or set them in the environment.
#
# RESUME=true continues the run in OUT_DIR from its newest checkpoint, with the checkpoint's settings: the defaults
# below are a new run's, and a resumed run passes only the variables set in the environment. The trainer applies
# each of those that differs from the checkpoint's and says so, one line each (resume: --max_steps 20000 -> 40000).
# So `RESUME=true bash scripts/train_gpt2.sh` goes on as the run was started (with whatever variables it was
# started with), and `RESUME=true MAX_STEPS=40000 bash scripts/train_gpt2.sh` trains it further. Paths, DEVICE
# and the extra flags given to this script are passed on every launch. See docs/training.md, "Resuming a run".
set -euo pipefail
# Paths you set are relative to the folder you run this from; the defaults below are the repo's folders.
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # python -m gpt2 from any folder
. "$REPO/scripts/lib/settings.sh"              # before the defaults: notes the variables the environment sets

DATA_DIR=${DATA_DIR:-$REPO/data/tokens}        # train.bin / eval.bin from scripts/encode_wikipedia.sh
TOKENIZER=${TOKENIZER:-$REPO/data/tokenizer.json}
OUT_DIR=${OUT_DIR:-$REPO/runs/gpt2-softplus}
RESUME=${RESUME:-false}                        # true: continue OUT_DIR from its newest checkpoint (see above)
DEVICE=${DEVICE:-auto}

PRESET=${PRESET:-gpt2}                         # small | gpt2 | gpt2-medium | gpt2-large | gpt2-xl
ATTENTION=${ATTENTION:-softplus}               # softmax | softmax_naive | softplus
POSITION=${POSITION:-learned}                  # learned | none | alibi | rope (all but learned read past SEQ_LEN)
LENGTH_BASE=${LENGTH_BASE:-none}               # scale query i's scores by log(n_i)/log(LENGTH_BASE); none: off
DROPOUT=${DROPOUT:-0.0}

SEQ_LEN=${SEQ_LEN:-1024}
BATCH_SIZE=${BATCH_SIZE:-16}                   # per micro-batch
ACCUM_STEPS=${ACCUM_STEPS:-32}                 # global batch = BATCH_SIZE * ACCUM_STEPS sequences
MAX_STEPS=${MAX_STEPS:-20000}
LR=${LR:-6e-4}
MIN_LR=${MIN_LR:-6e-5}
WARMUP_STEPS=${WARMUP_STEPS:-700}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.1}
GRAD_CLIP=${GRAD_CLIP:-1.0}
SEED=${SEED:-1337}

EVAL_EVERY=${EVAL_EVERY:-250}
EVAL_BATCHES=${EVAL_BATCHES:-50}               # 0: the whole eval set
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-1000}
KEEP_CHECKPOINTS=${KEEP_CHECKPOINTS:-3}
REPORT_TO=${REPORT_TO:-none}                   # none | tensorboard | wandb | tensorboard,wandb: trackers that
                                               # mirror metrics.jsonl (on resume: the checkpoint's)
PRECISION_FLAGS=${PRECISION_FLAGS-auto}        # auto: "--amp_bf16 --allow_tf32" on a GPU, fp32 on the CPU (on
                                               # resume: the checkpoint's precision); or any of --amp_fp16
                                               # --amp_bf16 --bf16 --allow_tf32 --compile ("": fp32 / on resume,
                                               # the checkpoint's)
if [ "$PRECISION_FLAGS" = auto ]; then PRECISION_FLAGS=$(auto_precision_flags); fi

settings --preset PRESET --attention ATTENTION --position POSITION --length_base LENGTH_BASE --dropout DROPOUT \
  --seq_len SEQ_LEN --batch_size BATCH_SIZE --accum_steps ACCUM_STEPS --max_steps MAX_STEPS \
  --lr LR --min_lr MIN_LR --warmup_steps WARMUP_STEPS --weight_decay WEIGHT_DECAY --grad_clip GRAD_CLIP \
  --seed SEED --eval_every EVAL_EVERY --eval_batches EVAL_BATCHES \
  --checkpoint_every CHECKPOINT_EVERY --keep_checkpoints KEEP_CHECKPOINTS \
  --report_to REPORT_TO

# exec: the trainer replaces this shell, so a SIGTERM sent to the script (docker stop, a scheduler) reaches it
# and it saves a checkpoint before exiting.
# shellcheck disable=SC2086  # PRECISION_FLAGS is a list of flags
exec python -m gpt2 train \
  --data_dir "$DATA_DIR" --tokenizer "$TOKENIZER" --out_dir "$OUT_DIR" --device "$DEVICE" --resume "$RESUME" \
  "${SETTINGS[@]}" $PRECISION_FLAGS "$@"
