#!/usr/bin/env bash
# Turn your own text into clean plain-text train/eval shards: plain text, JSONL or Parquet (optionally .gz, .zst,
# .bz2 or .xz compressed), as a file, a folder or a glob. Edit the variables below, or set them in the
# environment; extra arguments are passed on (e.g. --overwrite, or --text another/folder for more input).
#   TEXT=input.txt EVAL_FRACTION=0.1 OUT_DIR=data/shakespeare scripts/prepare_text.sh
set -euo pipefail
# Paths you set are relative to the folder you run this from; the defaults below are the repo's folders.
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # python -m gpt2 from any folder

TEXT=${TEXT:-}                                 # a file, a folder (every file in it) or a glob: 'data/*.parquet'
OUT_DIR=${OUT_DIR:-$REPO/data/text}            # train/, eval/, manifest.json
FORMAT=${FORMAT:-auto}                         # auto (from each file's name) | text | jsonl | parquet
DOCUMENTS=${DOCUMENTS:-file}                   # where a plain-text document ends: file | blank_line | separator
SEPARATOR=${SEPARATOR:-}                       # the line between documents for DOCUMENTS=separator: '<|endoftext|>'
TEXT_FIELD=${TEXT_FIELD:-text}                 # the JSONL field / Parquet column that holds the text
EVAL_FRACTION=${EVAL_FRACTION:-0.005}          # documents, by a hash of their text (0.1 for a small corpus); a
                                               # corpus of one document: its last EVAL_FRACTION of bytes
SHARD_SIZE_MB=${SHARD_SIZE_MB:-100}
WORKERS=${WORKERS:-$(nproc)}                   # files read at once (one file is read by one process)

if [ -z "$TEXT" ]; then
  echo "error: set TEXT to a file, a folder or a quoted glob of your text, e.g. TEXT=input.txt $0" >&2
  exit 2
fi
separator=()
if [ -n "$SEPARATOR" ]; then separator=(--separator="$SEPARATOR"); fi

python -m gpt2 prepare --text "$TEXT" --out_dir "$OUT_DIR" --format "$FORMAT" --documents "$DOCUMENTS" \
  ${separator[@]+"${separator[@]}"} --text_field "$TEXT_FIELD" --eval_fraction "$EVAL_FRACTION" \
  --shard_size_mb "$SHARD_SIZE_MB" --workers "$WORKERS" "$@"
