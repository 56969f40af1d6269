#!/usr/bin/env bash
# Export a checkpoint to ONNX, check it against PyTorch, build a TensorRT engine (GPU + TensorRT, e.g. the NGC
# container), and benchmark every backend. Edit the variables below, or set them in the environment.
set -euo pipefail
# Paths you set are relative to the folder you run this from; the defaults below are the repo's folders.
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # python -m gpt2 from any folder

# A checkpoint folder, or a run folder (its newest checkpoint):
CHECKPOINT=${CHECKPOINT:-$REPO/runs/gpt2-softplus}
PRECISION=${PRECISION:-fp16}                   # fp32 | fp16 | bf16 (bf16: TensorRT only; ORT's CPU has no bf16)
                                               # generate/evaluate --backend open it (their PRECISION=auto picks
                                               # fp32 if exported, else the only export; or set it there)
STAGES=${STAGES:-export,validate,tensorrt,benchmark}
DEVICE=${DEVICE:-auto}
EVAL_TOKENS=${EVAL_TOKENS:-}                   # empty: the eval set recorded in the checkpoint

BATCH_SIZE=${BATCH_SIZE:-32}                   # benchmark batch
SEQ_LEN=${SEQ_LEN:-}                           # benchmark sequence length; empty: the model's max_seq_len
                                               # (2048 for the small preset, as in the seed's table)
# TensorRT optimisation profile: the engine accepts min..max and is tuned for opt.
# Empty: batch 1..BATCH_SIZE (opt BATCH_SIZE), query 1..SEQ_LEN (opt SEQ_LEN), cache 0..SEQ_LEN-1 (opt 0),
# each max widened to cover the accuracy check run on the engine (4 x min(256, max_seq_len) tokens, 64 greedy
# steps); bounds set here that exclude it are refused before the build. SEQ_LEN and the maxima may go past
# max_seq_len only for a model without learned positions (--position none, alibi or rope).
MIN_BATCH=${MIN_BATCH:-1};  OPT_BATCH=${OPT_BATCH:-};  MAX_BATCH=${MAX_BATCH:-}
MIN_QUERY=${MIN_QUERY:-1};  OPT_QUERY=${OPT_QUERY:-};  MAX_QUERY=${MAX_QUERY:-}
MIN_CACHE=${MIN_CACHE:-0};  OPT_CACHE=${OPT_CACHE:-0}; MAX_CACHE=${MAX_CACHE:-}
WORKSPACE_GB=${WORKSPACE_GB:-4}
TIMING_CACHE=${TIMING_CACHE:-}                 # empty: RUN/trt_timing.cache, shared by the run's builds

BENCH_BACKENDS=${BENCH_BACKENDS:-pytorch,pytorch-compile,onnxruntime-cpu,onnxruntime-cuda,tensorrt}
COMPILE=${COMPILE:-true}                       # false: skip PyTorch + torch.compile
WARMUP=${WARMUP:-2}
ITERS=${ITERS:-10}
DECODE_STEPS=${DECODE_STEPS:-32}
ORT_THREADS=${ORT_THREADS:-0}                  # 0: one per core

python -m gpt2 deploy "$CHECKPOINT" --precision "$PRECISION" --stages "$STAGES" --device "$DEVICE" \
  ${EVAL_TOKENS:+--eval_tokens "$EVAL_TOKENS"} --batch_size "$BATCH_SIZE" ${SEQ_LEN:+--seq_len "$SEQ_LEN"} \
  --min_batch "$MIN_BATCH" ${OPT_BATCH:+--opt_batch "$OPT_BATCH"} ${MAX_BATCH:+--max_batch "$MAX_BATCH"} \
  --min_query "$MIN_QUERY" ${OPT_QUERY:+--opt_query "$OPT_QUERY"} ${MAX_QUERY:+--max_query "$MAX_QUERY"} \
  --min_cache "$MIN_CACHE" --opt_cache "$OPT_CACHE" ${MAX_CACHE:+--max_cache "$MAX_CACHE"} \
  --workspace_gb "$WORKSPACE_GB" ${TIMING_CACHE:+--timing_cache "$TIMING_CACHE"} \
  --bench_backends "$BENCH_BACKENDS" --compile "$COMPILE" --warmup "$WARMUP" --iters "$ITERS" \
  --decode_steps "$DECODE_STEPS" --ort_threads "$ORT_THREADS" "$@"
