#!/usr/bin/env bash
# Train the byte-level BPE tokenizer on the prepared Wikipedia train split. Edit the variables below, or set them
# in the environment; extra arguments are passed on (e.g. --overwrite).
set -euo pipefail
# Paths you set are relative to the folder you run this from; the defaults below are the repo's folders.
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # python -m gpt2 from any folder

CORPUS_DIR=${CORPUS_DIR:-$REPO/data/wiki}      # text shards from scripts/prepare_wikipedia.sh
VOCAB_SIZE=${VOCAB_SIZE:-50257}                # GPT-2's; anything >= 257 (256 bytes + <|endoftext|>)
MIN_FREQUENCY=${MIN_FREQUENCY:-2}              # a pair must occur this often to become a token
MAX_BYTES=${MAX_BYTES:-0}                      # 0: the whole train split; e.g. 2000000000 to train on 2 GB
OUT=${OUT:-$REPO/data/tokenizer.json}

python -m gpt2 train-tokenizer --corpus_dir "$CORPUS_DIR" --vocab_size "$VOCAB_SIZE" \
  --min_frequency "$MIN_FREQUENCY" --max_bytes "$MAX_BYTES" --out "$OUT" "$@"
