#!/usr/bin/env bash
# The whole pipeline on the bundled Wikipedia excerpt (206 real articles shipped by gensim), in minutes on a CPU:
# dump -> text shards -> tokenizer -> token files -> train a tiny GPT-2 -> evaluate -> generate.
set -euo pipefail
# Paths you set are relative to the folder you run this from; the defaults below are the repo's folders.
REPO=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # python -m gpt2 from any folder

OUT=${QUICKSTART_DIR:-$REPO/runs/quickstart}   # QUICKSTART_DIR, not WORK: clusters set $WORK to yours
ATTENTION=${ATTENTION:-softplus}               # softmax | softmax_naive | softplus
POSITION=${POSITION:-learned}                  # learned | none | alibi | rope (all but learned read past SEQ_LEN)
LENGTH_BASE=${LENGTH_BASE:-none}               # scale query i's scores by log(n_i)/log(LENGTH_BASE); none: off
VOCAB_SIZE=${VOCAB_SIZE:-4096}
MAX_STEPS=${MAX_STEPS:-600}
SEQ_LEN=${SEQ_LEN:-128}
BATCH_SIZE=${BATCH_SIZE:-16}
DEVICE=${DEVICE:-auto}                         # a GPU when there is one

# Start afresh, removing only what this script writes, and only in a folder it made (marked by MARKER): a
# QUICKSTART_DIR that holds anything else (say, a real pipeline's data/) is refused, not emptied.
MARKER="$OUT/.quickstart"
if [ ! -e "$MARKER" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  echo "error: $OUT is not empty and has no $MARKER: this script did not make it, and will not delete" \
    "anything in it; set QUICKSTART_DIR to a new or empty folder (or remove $OUT yourself)" >&2
  exit 2
fi
mkdir -p "$OUT"
touch "$MARKER"
rm -rf "$OUT/wiki" "$OUT/tokenizer.json" "$OUT/tokens" "$OUT/run"
python -m gpt2 prepare --dump sample --out_dir "$OUT/wiki" --eval_fraction 0.1
python -m gpt2 train-tokenizer --corpus_dir "$OUT/wiki" --vocab_size "$VOCAB_SIZE" --out "$OUT/tokenizer.json"
python -m gpt2 encode --corpus_dir "$OUT/wiki" --tokenizer "$OUT/tokenizer.json" --out_dir "$OUT/tokens"
python -m gpt2 train --data_dir "$OUT/tokens" --tokenizer "$OUT/tokenizer.json" --out_dir "$OUT/run" \
  --preset small --attention "$ATTENTION" --position "$POSITION" --length_base "$LENGTH_BASE" --max_seq_len 256 \
  --seq_len "$SEQ_LEN" --batch_size "$BATCH_SIZE" \
  --max_steps "$MAX_STEPS" --lr 3e-3 --min_lr 3e-4 --warmup_steps 50 --weight_decay 0.1 \
  --eval_every 200 --eval_batches 20 --checkpoint_every 200 --log_every 20 --device "$DEVICE"
python -m gpt2 evaluate "$OUT/run" --unigram_baseline --device "$DEVICE"
python -m gpt2 generate "$OUT/run" --prompt "The history of" --prompt "In mathematics, a" \
  --max_new_tokens 60 --num_samples 2 --temperature 0.8 --top_p 0.95 --seed 0 --device "$DEVICE"
