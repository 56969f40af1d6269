"""``python -m gpt2 deploy CHECKPOINT``: export to ONNX, validate, build a TensorRT engine, benchmark.

The stages and the report are described in :mod:`gpt2.deployment.pipeline`.
"""

from __future__ import annotations

import argparse

from gpt2.checkpoint import find_checkpoint
from gpt2.deployment.config import BenchConfig, BuildConfig, DeployConfig
from gpt2.deployment.pipeline import deploy
from gpt2.flags import add_flags, from_flags
from gpt2.inference.profiles import ProfileConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    add_flags(parser, DeployConfig, "deploy")
    add_flags(parser, ProfileConfig, "TensorRT optimisation profile")
    add_flags(parser, BuildConfig, "TensorRT build")
    add_flags(parser, BenchConfig, "benchmark")


def run(args: argparse.Namespace) -> int:
    cfg = from_flags(DeployConfig, args)
    profile, build = from_flags(ProfileConfig, args), from_flags(BuildConfig, args)
    failed = deploy(find_checkpoint(args.checkpoint), cfg, profile, build, from_flags(BenchConfig, args))
    if failed:
        print(f"error: {', '.join(failed)} failed (see above)")
        return 1
    return 0
