"""``python -m gpt2 memory``: the estimated peak training memory of a preset for each attention kind, on paper
(the formula: :mod:`gpt2.training.memory`).

    python -m gpt2 memory --preset small --seq_len 2048 --batch_size 32
"""

from __future__ import annotations

import argparse

from gpt2.training.memory import GIB, PRECISIONS, compare_attention


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="small", help="model preset")
    parser.add_argument("--seq_len", type=int, default=2048, help="tokens per sequence")
    parser.add_argument("--batch_size", type=int, default=32, help="sequences per micro-batch")
    parser.add_argument("--precision", default="amp_bf16", choices=PRECISIONS, help="training precision")
    parser.add_argument("--device_type", default="cuda", choices=("cuda", "cpu"), help="the device trained on")
    parser.add_argument("--vocab_size", type=int, default=50257, help="tokens in the vocabulary")


def run(args: argparse.Namespace) -> int:
    rows = compare_attention(
        args.preset, args.seq_len, args.batch_size, args.precision, args.device_type, args.vocab_size
    )
    print(
        f"preset {args.preset}, vocab {args.vocab_size}, batch {args.batch_size} x seq {args.seq_len}, "
        f"{args.precision} on {args.device_type} (estimates, GiB)"
    )
    print(f"{'attention':<14} {'peak':>8} {'activations':>12} {'scores':>8} {'temporaries':>12} {'static':>8}")
    for kind, e in rows.items():
        static = e.weights + e.gradients + e.optimizer + e.working_weights
        print(
            f"{kind:<14} {e.total / GIB:>8.2f} {e.activations / GIB:>12.2f} {e.scores / GIB:>8.2f} "
            f"{e.temporaries / GIB:>12.2f} {static / GIB:>8.2f}"
        )
    if "softplus" in rows and "softmax_naive" in rows:
        print(f"softplus / softmax_naive peak: {rows['softplus'].total / rows['softmax_naive'].total:.3f}")
    return 0
