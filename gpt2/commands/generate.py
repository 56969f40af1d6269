"""``python -m gpt2 generate CHECKPOINT``: sample continuations of prompts."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from gpt2.checkpoint import find_checkpoint
from gpt2.errors import UserError
from gpt2.flags import add_flags, from_flags
from gpt2.generation.generate import generate
from gpt2.generation.sampling import SamplingConfig
from gpt2.inference import BACKEND_PRECISIONS, BACKENDS, PRECISION_HELP, open_backend
from gpt2.io import atomic_write, check_output_path, file_problem
from gpt2.tokenizer import Tokenizer


@dataclass
class GenerateConfig:
    prompt_file: str | None = field(default=None, metadata={"help": "file of prompts, one per line"})
    max_new_tokens: int = field(default=100, metadata={"help": "tokens to generate per sample"})
    num_samples: int = field(default=1, metadata={"help": "samples per prompt"})
    seed: int | None = field(default=None, metadata={"help": "random seed (None: nondeterministic)"})
    backend: str = field(default="pytorch", metadata={"help": "what runs the model", "choices": BACKENDS})
    precision: str = field(default="auto", metadata={"help": PRECISION_HELP, "choices": BACKEND_PRECISIONS})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if present), cpu, cuda"})
    output: str | None = field(default=None, metadata={"help": "also write the samples to this JSONL file"})

    def __post_init__(self) -> None:
        if not self.max_new_tokens >= 0:
            raise UserError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not self.num_samples >= 1:
            raise UserError(f"num_samples must be >= 1, got {self.num_samples}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable; '' for none)")
    add_flags(parser, GenerateConfig, "generation")
    add_flags(parser, SamplingConfig, "sampling")


def read_prompts(args: argparse.Namespace, cfg: GenerateConfig) -> list[str]:
    prompts = list(args.prompt)
    if cfg.prompt_file:
        prompts += read_prompt_file(Path(cfg.prompt_file))
    return prompts or [""]  # no prompt at all: one unconditional sample


def read_prompt_file(path: Path) -> list[str]:
    """The file's non-blank lines; a file without any is an error (not a silent unconditional sample)."""
    if problem := file_problem(path):
        raise UserError(f"prompt file {path} {problem}; give a text file of prompts, one a line")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"prompt file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompt file {path} holds no prompt (it is empty or blank); for an unconditional "
                        "sample, pass --prompt ''")
    return prompts


def run(args: argparse.Namespace) -> int:
    cfg, sampling = from_flags(GenerateConfig, args), from_flags(SamplingConfig, args)
    output = check_output_path(cfg.output) if cfg.output else None  # before the model loads and samples
    prompts = read_prompts(args, cfg)
    ckpt = find_checkpoint(args.checkpoint)
    print(f"checkpoint {ckpt.path} (step {ckpt.step})")  # a run folder: which of its checkpoints
    tokenizer = Tokenizer.load(ckpt.tokenizer_path)
    backend = open_backend(ckpt, cfg.backend, cfg.device, cfg.precision)
    records = []
    for n, prompt in enumerate(prompts):
        # An empty prompt starts a fresh document, as GPT-2 does for unconditional samples.
        prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_id]
        # One seed per prompt: with a shared one, every prompt would draw the same random numbers, and the
        # samples of different prompts would be correlated.
        seed = None if cfg.seed is None else cfg.seed + n
        samples = generate(
            backend, prompt_ids, cfg.max_new_tokens, sampling, cfg.num_samples, tokenizer.eot_id, seed
        )
        for i, sample in enumerate(samples):
            text = tokenizer.decode(sample)
            print(f"=== prompt {prompt!r}, sample {i + 1}/{len(samples)} ===\n{prompt}{text}\n")
            records.append({"prompt": prompt, "sample": i, "text": text, "tokens": len(sample)})
    if output is not None:
        with atomic_write(output, encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        print(f"wrote {output}")
    return 0
