#!/usr/bin/env bash
# Evaluate a checkpoint: loss, perplexity, bits per byte. Edit the variables below, or set them in the environment.
set -euo pipefail
# Paths you set are relative to the folder you run this from; the defaults below are the repo's folders.
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # python -m gpt2 from any folder

# A checkpoint folder, or a run folder (its newest checkpoint):
CHECKPOINT=${CHECKPOINT:-$REPO/runs/gpt2-softplus}
EVAL_TOKENS=${EVAL_TOKENS:-}                   # empty: the eval.bin the model was trained with
TEXT=${TEXT:-}                                 # a text file (.txt, .jsonl, .parquet; .gz/.zst/.bz2) instead of tokens
TEXT_FIELD=${TEXT_FIELD:-text}                 # the JSONL field / Parquet column of the text
MAX_BATCHES=${MAX_BATCHES:-0}                  # 0: the whole eval set, exactly once
BATCH_SIZE=${BATCH_SIZE:-8}
SEQ_LEN=${SEQ_LEN:-}                           # empty: the training length; longer for none/alibi/rope models
STRIDE=${STRIDE:-}                             # empty: SEQ_LEN (windows that do not overlap); below it, sliding
                                               # windows that carry context over
BACKEND=${BACKEND:-pytorch}                    # pytorch | onnxruntime | tensorrt
PRECISION=${PRECISION:-auto}                   # auto | fp32 | fp16 | bf16: the export deploy made (auto: fp32 if
                                               # exported, else the only one; pytorch: fp32)
DEVICE=${DEVICE:-auto}

python -m gpt2 evaluate "$CHECKPOINT" ${EVAL_TOKENS:+--eval_tokens "$EVAL_TOKENS"} \
  ${TEXT:+--text "$TEXT" --text_field "$TEXT_FIELD"} ${STRIDE:+--stride "$STRIDE"} \
  --max_batches "$MAX_BATCHES" --batch_size "$BATCH_SIZE" ${SEQ_LEN:+--seq_len "$SEQ_LEN"} --backend "$BACKEND" --precision "$PRECISION" \
  --device "$DEVICE" "$@"
