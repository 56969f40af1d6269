"""``python -m gpt2 export-hf CHECKPOINT OUT_DIR``: a checkpoint as a Hugging Face ``save_pretrained`` folder."""

from __future__ import annotations

import argparse

from gpt2.checkpoint import find_checkpoint, load_model
from gpt2.model.hf_export import export_hf
from gpt2.tokenizer import Tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("out_dir", help="the folder to write: new or empty")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in out_dir")


def run(args: argparse.Namespace) -> int:
    ckpt = find_checkpoint(args.checkpoint)
    model, _ = load_model(ckpt)
    exported = export_hf(model, Tokenizer.load(ckpt.tokenizer_path), args.out_dir, overwrite=args.overwrite)
    path, remote = exported.path, exported.remote_code
    trust = ", trust_remote_code=True" if remote else ""
    print(f"exported {ckpt.path} (step {ckpt.step}) -> {path} ({exported.architecture}"
          f"{', with its modeling code' if remote else ''})\n"
          f"load it with AutoModelForCausalLM and AutoTokenizer .from_pretrained({str(path)!r}{trust}); "
          f"evaluate it with lm_eval --model hf --model_args pretrained={path}{trust.replace(' ', '')}")
    return 0
