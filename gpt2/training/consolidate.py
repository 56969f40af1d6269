"""``python -m gpt2 consolidate CHECKPOINT``: add a single-file ``model.safetensors`` to a sharded checkpoint."""

from __future__ import annotations

import argparse

from gpt2.checkpoint import consolidate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")


def run(args: argparse.Namespace) -> int:
    print(f"wrote {consolidate(args.checkpoint)}")
    return 0
