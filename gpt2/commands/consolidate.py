"""``python -m gpt2 consolidate CHECKPOINT``: add a single-file ``model.safetensors`` to a sharded checkpoint."""

from __future__ import annotations

import argparse

from gpt2.checkpoint import MODEL_FILE, consolidate, find_checkpoint, is_consolidated


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")


def run(args: argparse.Namespace) -> int:
    ckpt = find_checkpoint(args.checkpoint)
    if is_consolidated(ckpt):
        print(f"{ckpt.path} is already consolidated: its weights are one file, {ckpt.path / MODEL_FILE} "
              "(nothing written)")
        return 0
    print(f"wrote {consolidate(ckpt)}")
    return 0
