"""``python -m gpt2 import-hf SRC OUT``: a Hugging Face GPT-2 (a folder, or a hub id when online) as a checkpoint."""

from __future__ import annotations

import argparse
import os
import shutil

from gpt2.checkpoint import META_FILE, save_checkpoint
from gpt2.io import building_dir, check_new_dir
from gpt2.model.hf_import import import_hf


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="a save_pretrained folder (GPT2LMHeadModel, or one export-hf wrote), or a hub "
                                    "id such as gpt2 or gpt2-medium (downloaded: needs a connection)")
    parser.add_argument("out", help="the checkpoint folder to write: new or empty")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier checkpoint in out")


def run(args: argparse.Namespace) -> int:
    out = check_new_dir(args.out, "checkpoint folder", replaceable=META_FILE, overwrite=args.overwrite)
    imported = import_hf(args.src)
    with building_dir(out, replace=args.overwrite) as staging:
        # A checkpoint of step 0 (weights, tokenizer, meta.json), written as a run's, then moved up to be OUT.
        written = save_checkpoint(staging / "run", 0, imported.model, None, imported.tokenizer.data,
                                  meta={"imported_from": imported.source})
        for file in written.iterdir():
            os.replace(file, staging / file.name)
        shutil.rmtree(staging / "run")
    cfg = imported.model.cfg
    print(f"imported {args.src} ({imported.source['architecture']}: {cfg.n_layers} layers, dim {cfg.dim}, "
          f"{cfg.n_heads} heads, {cfg.attention} attention, {cfg.position} positions) -> checkpoint {out}\n"
          f"its tokenizer is {out / 'tokenizer.json'}: encode data with it to evaluate or fine-tune "
          f"(train --init_from {out})")
    return 0
