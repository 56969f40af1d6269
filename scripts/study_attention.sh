#!/usr/bin/env bash
# The attention study: softmax vs softplus, with and without the length scale, over position encodings and
# seeds, trained on the same data and budget, evaluated at 1x-16x the training length; writes study.md,
# study.json and PNGs to OUT_DIR. Rerun the same command to continue a stopped study.
# Edit the variables below, or set them in the environment. The defaults are the study published in
# docs/study.md: the bundled Wikipedia excerpt on a CPU (prepared here first if DATA_DIR is not there).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # python -m gpt2 from any folder

DATA=${DATA:-$REPO/runs/study-data}            # used when DATA_DIR/TOKENIZER are not given: the sample, prepared
DATA_DIR=${DATA_DIR:-$DATA/tokens}
TOKENIZER=${TOKENIZER:-$DATA/tokenizer.json}
VOCAB_SIZE=${VOCAB_SIZE:-4096}                 # for the sample's tokenizer only
OUT_DIR=${OUT_DIR:-$REPO/runs/study}

ATTENTION=${ATTENTION:-"softmax softplus"}     # attention kinds (softmax softmax_naive softplus)
LENGTH_SCALE=${LENGTH_SCALE:-"false true"}      # length scale off / on
POSITION=${POSITION:-"learned none alibi rope"} # learned is a 1x baseline (it cannot read longer sequences)
SEEDS=${SEEDS:-"0 1 2"}
LENGTH_BASE=${LENGTH_BASE:-none}               # base b of log(n)/log(b); none: the training length

N_LAYERS=${N_LAYERS:-4}
DIM=${DIM:-128}
N_HEADS=${N_HEADS:-4}
SEQ_LEN=${SEQ_LEN:-128}
BATCH_SIZE=${BATCH_SIZE:-16}
MAX_STEPS=${MAX_STEPS:-200}
LR=${LR:-3e-3}
MIN_LR=${MIN_LR:-3e-4}
WARMUP_STEPS=${WARMUP_STEPS:-30}
EVAL_EVERY=${EVAL_EVERY:-50}
EVAL_LENGTHS=${EVAL_LENGTHS:-"1 2 4 8 16"}     # multiples of SEQ_LEN, each on the whole eval set
DEVICE=${DEVICE:-auto}
JOBS=${JOBS:-2}                                # cells trained at once (CPU: one per core; GPU: 1)

if [ ! -f "$DATA_DIR/train.bin" ]; then
  echo "preparing the bundled sample in $DATA"
  python -m gpt2 prepare --dump sample --out_dir "$DATA/wiki" --eval_fraction 0.1
  python -m gpt2 train-tokenizer --corpus_dir "$DATA/wiki" --vocab_size "$VOCAB_SIZE" --out "$TOKENIZER"
  python -m gpt2 encode --corpus_dir "$DATA/wiki" --tokenizer "$TOKENIZER" --out_dir "$DATA_DIR"
fi

# shellcheck disable=SC2086  # the grid variables are lists
exec python -m gpt2 study --data_dir "$DATA_DIR" --tokenizer "$TOKENIZER" --out_dir "$OUT_DIR" \
  --attention $ATTENTION --length_scale $LENGTH_SCALE --position $POSITION --seeds $SEEDS \
  --length_base "$LENGTH_BASE" --n_layers "$N_LAYERS" --dim "$DIM" --n_heads "$N_HEADS" \
  --seq_len "$SEQ_LEN" --batch_size "$BATCH_SIZE" --max_steps "$MAX_STEPS" --lr "$LR" --min_lr "$MIN_LR" \
  --warmup_steps "$WARMUP_STEPS" --eval_every "$EVAL_EVERY" --eval_lengths $EVAL_LENGTHS --device "$DEVICE" \
  --jobs "$JOBS" "$@"
