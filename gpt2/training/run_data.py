"""A run's data: the train and eval token files, checked against the tokenizer, and what they are.

Checkpoints record what their data was (its path, header facts and a hash of a sample), so that a resume on other
data is noticed: it is allowed (a run may go on with more text), with a warning that says what changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2.checkpoint import Checkpoint
from gpt2.data.loader import count_eval_batches
from gpt2.data.tokens import TokenFile, check_tokenizer_matches
from gpt2.tokenizer import Tokenizer


@dataclass(frozen=True)
class RunData:
    train: TokenFile
    eval: TokenFile
    identity: dict[str, dict[str, Any]]  # by split: what the file is (see data_identity)

    def record(self) -> dict[str, Any]:
        """What a checkpoint's meta.json records about the data."""
        return {
            "train": str(self.train.path.resolve()),
            "eval": str(self.eval.path.resolve()),
            "train_identity": self.identity["train"],
            "eval_identity": self.identity["eval"],
        }


def open_run_data(data_dir: str | Path, tokenizer: Tokenizer, seq_len: int, batch_size: int) -> RunData:
    """``data_dir``'s train.bin and eval.bin, which must have been encoded with ``tokenizer``."""
    data_dir = Path(data_dir)
    train, eval_ = TokenFile(data_dir / "train.bin"), TokenFile(data_dir / "eval.bin")
    for token_file in (train, eval_):
        check_tokenizer_matches(token_file, tokenizer)
    # An eval set too short for one target is an error now, not at the first evaluation (steps later).
    count_eval_batches(eval_, seq_len, batch_size)
    return RunData(train, eval_, {"train": data_identity(train), "eval": data_identity(eval_)})


def data_changes(ckpt: Checkpoint, data: RunData) -> list[str]:
    """How the token files of this run differ from those the checkpoint records (none: the same data)."""
    recorded = ckpt.meta.get("data", {})
    problems = []
    for split, token_file in (("train", data.train), ("eval", data.eval)):
        now = data_identity(token_file)
        then = recorded.get(f"{split}_identity")
        if isinstance(then, dict):  # the same data may have moved: compare what it is, not where
            differ = [k for k in now if k != "path" and then.get(k) != now[k]]
            if differ:
                facts = ", ".join(f"{k} {then.get(k)} -> {now[k]}" for k in differ if k != "sample_sha256")
                problems.append(
                    f"{split} tokens {then.get('path')} -> {now['path']} differ "
                    f"({facts or 'same size, other tokens'}); the {split} "
                    + ("batches differ from the original" if split == "train" else "losses are not comparable")
                )
        elif recorded.get(split) and recorded[split] != now["path"]:  # a checkpoint of an older version
            problems.append(f"{split} tokens {recorded[split]} -> {now['path']} (the checkpoint records no more)")
    return problems


def data_identity(token_file: TokenFile, sample_tokens: int = 1 << 19) -> dict[str, Any]:
    """What a token file is, recorded in checkpoints so that a resume notices other data: its path, its header
    facts and a hash of its first and last ``sample_tokens`` tokens (cheap: 2 MB of a file of any size)."""
    h = token_file.header
    sample = hashlib.sha256(token_file.tokens[:sample_tokens].tobytes())
    sample.update(token_file.tokens[-sample_tokens:].tobytes())
    return {
        "path": str(token_file.path.resolve()),
        "n_tokens": h.n_tokens,
        "n_docs": h.n_docs,
        "n_bytes": h.n_bytes,
        "tokenizer_sha256": h.tokenizer_sha256,
        "sample_sha256": sample.hexdigest(),
    }
