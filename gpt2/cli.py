"""``python -m gpt2 <command>``: one entry point for every stage of the pipeline.

Each command is a module of :mod:`gpt2.commands` with ``add_arguments(parser)``
and ``run(args)``; the work is done by the library it calls. Modules are imported
only for the command that runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import atexit
import errno
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from gpt2.errors import UserError
from gpt2.interrupt import Interrupted

# name -> (module, one-line help), in pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("gpt2.commands.prepare", "Wikipedia XML dump or your own text -> plain-text train/eval shards"),
    "train-tokenizer": ("gpt2.commands.train_tokenizer", "train a byte-level BPE tokenizer on the train shards"),
    "encode": ("gpt2.commands.encode", "encode text shards into binary token files"),
    "train": ("gpt2.commands.train", "train GPT-2 (one process; FSDP under torchrun)"),
    "evaluate": ("gpt2.commands.evaluate", "loss, perplexity and bits per byte of a checkpoint"),
    "generate": ("gpt2.commands.generate", "sample text from a checkpoint with a KV cache"),
    "deploy": ("gpt2.commands.deploy", "export to ONNX, validate, build a TensorRT engine, benchmark"),
    "study": ("gpt2.commands.study", "softmax vs softplus: train and evaluate a grid of variants over seeds, report"),
    "plot": ("gpt2.commands.plot", "loss curves of several runs in one PNG"),
    "consolidate": ("gpt2.commands.consolidate", "turn a sharded (FSDP) checkpoint into one safetensors file"),
    "memory": ("gpt2.commands.memory", "estimated peak training memory of a preset for each attention kind"),
    "export-hf": ("gpt2.commands.export_hf", "a checkpoint as a Hugging Face transformers folder"),
    "import-hf": ("gpt2.commands.import_hf", "a Hugging Face GPT-2 (folder or hub id) as a checkpoint"),
}

# Failures of the machine or of a path the user gave, not of the code: one line, no traceback. (Other
# OSErrors keep theirs: they may be bugs.)
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
USER_OS_ERRORS = NO_SPACE | {
    errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
    errno.ENAMETOOLONG,
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, object]:
    parser = argparse.ArgumentParser(prog="python -m gpt2", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:
            module = importlib.import_module(module_name)
            module.add_arguments(cmd)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, module = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        result = module.run(args)  # type: ignore[union-attr]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in USER_OS_ERRORS:
            raise
        paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
        where = f": {paths}" if paths else " (writing an output: is the disk full?)" if e.errno in NO_SPACE else ""
        print(f"error: {e.strerror}{where}", file=sys.stderr)
        return 1
    except Interrupted as e:  # a data command stopped by SIGINT/SIGTERM, its cleanup done
        print(f"\n{e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # any other command (training turns a first Ctrl-C into a checkpoint and a stop)
        print(f"\n{Interrupted(signal.SIGINT)}", file=sys.stderr)
        return 128 + signal.SIGINT
    return int(result or 0)


def run_command(name: str) -> int:
    """Entry point of the thin top-level scripts (``train.py`` == ``python -m gpt2 train``)."""
    return main([name, *sys.argv[1:]])


def exit_process(entry_point: Callable[[], int]) -> NoReturn:
    """Run ``entry_point`` and end the process with the exit status it returns: the entry points' ``sys.exit``.

    A process that joined a process group (a torchrun worker) ends with ``os._exit`` instead, once the exit
    handlers have run and the output is flushed, skipping the interpreter's teardown; an exception that escapes
    ``entry_point`` there is printed as the interpreter would, and the status is 1. The teardown is not safe
    there: torch keeps references to the group past ``destroy_process_group``, so gloo's worker threads live
    on, and one that takes the GIL to release its last tensors during the teardown dies inside a C++
    destructor and aborts the process (SIGABRT) in place of its exit status.
    """
    try:
        code = entry_point()
    except Exception:
        if not _joined_process_group():
            raise
        traceback.print_exc()
        code = 1
    if _joined_process_group():
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _joined_process_group() -> bool:
    parallel = sys.modules.get("gpt2.training.parallel")  # not imported: no process group
    return parallel is not None and parallel.joined_process_group
