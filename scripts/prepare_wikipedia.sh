#!/usr/bin/env bash
# Turn a Wikipedia pages-articles XML dump into clean plain-text train/eval shards. Edit the variables below,
# or set them in the environment; extra arguments are passed on (e.g. --overwrite, --max_pages 1000).
set -euo pipefail
# Paths you set are relative to the folder you run this from; the defaults below are the repo's folders.
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # python -m gpt2 from any folder

# sample: the 206-page excerpt bundled with gensim (seconds). The full English Wikipedia (~22 GB of bz2, about
# 17 minutes on 16 cores, docs/pipeline_speed.md) as the multistream dump, whose index (downloaded with it) lets
# the workers decompress its streams in parallel:
#   DUMP=https://dumps.wikimedia.org/enwiki/latest/enwiki-latest-pages-articles-multistream.xml.bz2
# A URL is downloaded to DOWNLOAD_DIR first (resumable: run again after an interruption). Also a local .xml or
# .xml.bz2 (a plain dump is read by one process: about 13 MB/s of wikitext on one core, whatever the workers).
DUMP=${DUMP:-sample}
OUT_DIR=${OUT_DIR:-$REPO/data/wiki}            # train/, eval/, manifest.json
DOWNLOAD_DIR=${DOWNLOAD_DIR:-$REPO/data/dumps}
EVAL_FRACTION=${EVAL_FRACTION:-auto}           # by a hash of the title; auto: 0.1 for the sample (98 articles),
                                               # 0.005 for a real dump
SHARD_SIZE_MB=${SHARD_SIZE_MB:-100}
MIN_CHARS=${MIN_CHARS:-200}                    # skip articles shorter than this once cleaned
WORKERS=${WORKERS:-$(nproc)}

if [ "$EVAL_FRACTION" = auto ]; then
  if [ "$DUMP" = sample ]; then EVAL_FRACTION=0.1; else EVAL_FRACTION=0.005; fi
fi

python -m gpt2 prepare --dump "$DUMP" --out_dir "$OUT_DIR" --download_dir "$DOWNLOAD_DIR" \
  --eval_fraction "$EVAL_FRACTION" --shard_size_mb "$SHARD_SIZE_MB" --min_chars "$MIN_CHARS" \
  --workers "$WORKERS" "$@"
