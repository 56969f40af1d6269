#!/usr/bin/env bash
# Sample text from a checkpoint. Edit the variables below, or set them in the environment.
set -euo pipefail
# Paths you set are relative to the folder you run this from; the defaults below are the repo's folders.
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # python -m gpt2 from any folder

CHECKPOINT=${CHECKPOINT:-$REPO/runs/gpt2-softplus}
PROMPT=${PROMPT:-"The history of"}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-200}
NUM_SAMPLES=${NUM_SAMPLES:-3}
TEMPERATURE=${TEMPERATURE:-0.8}
TOP_K=${TOP_K:-0}                              # 0: no top-k cut
TOP_P=${TOP_P:-0.95}                           # 1: no nucleus cut
SEED=${SEED:-1234}
BACKEND=${BACKEND:-pytorch}                    # pytorch | onnxruntime | tensorrt
PRECISION=${PRECISION:-auto}                   # auto | fp32 | fp16 | bf16: the export deploy made (auto: fp32 if
                                               # exported, else the only one; pytorch: fp32)
DEVICE=${DEVICE:-auto}

python -m gpt2 generate "$CHECKPOINT" --prompt "$PROMPT" --max_new_tokens "$MAX_NEW_TOKENS" \
  --num_samples "$NUM_SAMPLES" --temperature "$TEMPERATURE" --top_k "$TOP_K" --top_p "$TOP_P" --seed "$SEED" \
  --backend "$BACKEND" --precision "$PRECISION" --device "$DEVICE" "$@"
