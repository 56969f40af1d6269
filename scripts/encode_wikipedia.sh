#!/usr/bin/env bash
# Encode the prepared Wikipedia shards into train.bin / eval.bin token files. Edit the variables below, or set
# them in the environment; extra arguments are passed on (e.g. --overwrite).
set -euo pipefail
# Paths you set are relative to the folder you run this from; the defaults below are the repo's folders.
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # python -m gpt2 from any folder

CORPUS_DIR=${CORPUS_DIR:-$REPO/data/wiki}          # text shards from scripts/prepare_wikipedia.sh
TOKENIZER=${TOKENIZER:-$REPO/data/tokenizer.json}  # from scripts/train_tokenizer.sh
OUT_DIR=${OUT_DIR:-$REPO/data/tokens}              # the trainer's --data_dir

python -m gpt2 encode --corpus_dir "$CORPUS_DIR" --tokenizer "$TOKENIZER" --out_dir "$OUT_DIR" "$@"
