#!/usr/bin/env bash
# Encode the prepared Wikipedia shards into train.bin / eval.bin token files. Edit the variables below, or set
# them in the environment; extra arguments are passed on (e.g. --overwrite).
set -euo pipefail
cd "$(dirname "$0")/.."

CORPUS_DIR=${CORPUS_DIR:-data/wiki}            # text shards from scripts/prepare_wikipedia.sh
TOKENIZER=${TOKENIZER:-data/tokenizer.json}    # from scripts/train_tokenizer.sh
OUT_DIR=${OUT_DIR:-data/tokens}                # the trainer's --data_dir

python -m gpt2 encode --corpus_dir "$CORPUS_DIR" --tokenizer "$TOKENIZER" --out_dir "$OUT_DIR" "$@"
