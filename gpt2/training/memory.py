r"""Peak memory of a training step, on paper: from the model shape, the micro-batch, the precision and the device.

Per process, in bytes, with ``P`` parameters (the tied embedding once), ``N = B*T`` tokens and ``S = B*H*T*T``
attention scores per micro-batch, width ``C``, attention width ``I = H*D``, padded vocabulary ``Vp``::

    weights, gradients    P * p each                  p = 2 in pure bf16, else 4; FSDP: / world size
    AdamW moments         2 * P * p
    working weights       autocast: a bf16/fp16 copy of every Linear weight, kept for the backward;
                          FSDP: the gathered root (embeddings) and about two blocks, weights and gradients
    activations           what autograd keeps for the backward of one micro-batch:
      per block, per token   2C*r + 2C*a + 4I*a + 8C*a + 4*r     LayerNorm inputs (residual dtype r), their
                                                                 outputs as the next Linear keeps them, q k v
                                                                 and the attention output, the MLP's fc and
                                                                 GELU outputs, LayerNorm statistics
        + the attention kind's own (see _attention_terms): fused kernels (SDPA/FlashAttention, flex attention,
          the softplus kernel on CUDA) fp32 row statistics, 4H per token; materialised scores per layer and
          score: softmax_naive (and SDPA's math path, which the CPU takes for ALiBi) its fp32 softmax, plus a
          bf16/fp16 copy outside fp32 (4 or 6 bytes); the PyTorch softplus (the CPU's) its input and weights
          (8 bytes in fp32 and bf16, 4 under CPU autocast, 6 under CUDA autocast)
      head, per token        C*(r + a) + 2r + 4V + 8               final LayerNorm, the loss's fp32
                                                                 log-softmax, the targets
    temporaries           the largest set alive on top of those at one time: the loss's backward (the step's
                          logits N*Vp*a and two fp32 N*V gradients), or the last block's backward: the logits
                          and either the MLP's two 4C gradients or, once the MLP has let go of what it kept,
                          the attention's gradients (two fp32 score tensors for softmax_naive, one for the
                          PyTorch softplus)

``a`` is the bytes of an activation (4 in fp32, 2 under autocast or in bf16) and ``r`` those of the residual
stream (autocast keeps it in fp32). Counted in full although not always all alive at the peak: gradients (with
``accum_steps`` 1 those of the blocks not yet through the backward do not exist yet) and dropout masks. Not
counted: forward-only temporaries (no larger than the backward's), the optimizer's per-tensor temporaries,
what ``--compile`` saves, the allocator's rounding, caching and fragmentation, the CUDA context and libraries.

Checked on the CPU for fp32, amp_bf16 and bf16 and every attention kind against the live tensor bytes of real
steps and the process's peak RSS (tests/test_memory.py; the ratios measured are in docs/results.md). glibc's
default malloc keeps freed blocks under 32 MiB in its heap, so a small run's RSS can exceed the estimate;
tensors of runs big enough to matter are mmap'ed and returned. The CUDA paths (the fused softplus kernel,
FlashAttention, CUDA autocast's fp32 ops) are derived from what their ops save for the backward, not measured.

``python -m gpt2 memory`` prints the estimate for a preset and each attention kind.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gpt2.errors import UserError
from gpt2.model.config import ATTENTION_KINDS, ModelConfig, model_config_from_preset

GIB = 2**30
PRECISIONS = ("fp32", "amp_bf16", "amp_fp16", "bf16")
SOFTPLUS_KERNEL_MAX_HEAD_DIM = 128  # the fused kernel's widest head (gpt2.attention.softplus_triton.HEAD_DIMS)
FSDP_GATHERED_BLOCKS = 2  # the block being computed and the one prefetched


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of one process, by part, in bytes."""

    weights: int
    gradients: int
    optimizer: int
    working_weights: int
    activations: int
    scores: int  # the part of ``activations`` that grows with T x T (0 for fused attention)
    temporaries: int

    @property
    def total(self) -> int:
        parts = (self.weights, self.gradients, self.optimizer, self.working_weights, self.activations)
        return sum(parts) + self.temporaries

    def summary(self) -> str:
        """The estimate in one line."""
        gib = {k: v / GIB for k, v in asdict(self).items()}
        scores = f", of which attention scores {gib['scores']:.2f}" if self.scores else ""
        return (
            f"estimated peak memory {self.total / GIB:.2f} GiB per process (weights {gib['weights']:.2f}, "
            f"gradients {gib['gradients']:.2f}, AdamW {gib['optimizer']:.2f}, working weights "
            f"{gib['working_weights']:.2f}, activations {gib['activations']:.2f}{scores}, temporaries "
            f"{gib['temporaries']:.2f})"
        )

    def to_dict(self) -> dict[str, float]:
        """The parts and the total in GiB, for the run config."""
        return {f"{k}_gib": round(v / GIB, 4) for k, v in {**asdict(self), "total": self.total}.items()}


@dataclass(frozen=True)
class _Dtypes:
    param: int  # bytes of a weight, a gradient, an AdamW moment
    act: int  # bytes of an activation
    residual: int  # bytes of the residual stream and of LayerNorm statistics
    autocast: bool


def _dtypes(precision: str, world_size: int) -> _Dtypes:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "amp_bf16" and world_size > 1):
        # Under FSDP, amp_bf16 is FSDP's bf16 parameter policy, not autocast: activations as in pure bf16.
        return _Dtypes(param=2 if precision == "bf16" else 4, act=2, residual=2, autocast=False)
    if precision == "fp32":
        return _Dtypes(param=4, act=4, residual=4, autocast=False)
    return _Dtypes(param=4, act=2, residual=4, autocast=True)


def attention_path(cfg: ModelConfig, device_type: str, softplus_kernel: bool | None = None) -> str:
    """How the attention of ``cfg`` runs on ``device_type``: ``fused`` (no T x T tensor: SDPA/FlashAttention,
    flex attention, the softplus kernel), ``materialised`` (softmax over stored scores: softmax_naive, and SDPA's
    math path that the CPU takes for ALiBi's additive bias) or ``softplus_reference`` (the PyTorch softplus).
    ``softplus_kernel`` says whether the fused softplus kernel takes the inputs (None: on CUDA, heads up to 128)."""
    cpu_alibi = cfg.attention == "softmax" and cfg.position == "alibi" and device_type != "cuda"
    if cfg.attention == "softmax_naive" or cpu_alibi:
        return "materialised"
    if cfg.attention == "softplus":
        if softplus_kernel is None:
            softplus_kernel = device_type == "cuda" and cfg.head_dim <= SOFTPLUS_KERNEL_MAX_HEAD_DIM
        return "fused" if softplus_kernel else "softplus_reference"
    return "fused"


def _attention_terms(cfg: ModelConfig, path: str, dt: _Dtypes, device_type: str) -> tuple[float, float, float]:
    """(bytes kept per token, bytes kept per score, bytes of backward temporaries per score) of one layer's
    attention, beyond q, k, v and its output (counted for every kind)."""
    inner, heads, a = cfg.n_heads * cfg.head_dim, cfg.n_heads, dt.act
    if path == "fused":
        # The row statistics (FlashAttention's logsumexp, the softplus kernel's row sums), fp32; the length
        # scale makes SDPA read a scaled copy of q.
        scaled_q = inner * a if cfg.length_base is not None and cfg.attention == "softmax" else 0
        return heads * 4 + scaled_q, 0, 0
    if path == "materialised":
        # Scores are computed in fp32 (promote_types(q, fp32)); softmax keeps its fp32 output, and the
        # product with v keeps it again cast to the activation dtype. Its backward frees that cast, then holds
        # two fp32 gradients at once.
        cast = a if a < 4 else 0
        return 0, 4 + cast, 8 - cast
    # The PyTorch softplus: softplus keeps its input and the product with v keeps the masked weights, each in
    # fp32 (q, k, v are cast up) unless autocast runs the matmuls in bf16/fp16 (on CUDA softplus itself
    # stays fp32 under autocast, on the CPU it follows its input). It also keeps the numerator (B, H, T, D)
    # and the row sums; in pure bf16 the fp32 copies of q, k, v too.
    cpu_autocast = dt.autocast and device_type != "cuda"
    per_score = (a if cpu_autocast else 4) + a if dt.autocast else 8
    per_token = inner * (a if dt.autocast else 4) + heads * (a if cpu_autocast else 4)
    if not dt.autocast:
        per_token += 3 * inner * (4 - a)
    # Its backward frees each score tensor as it makes the next gradient: one score-sized tensor at a time.
    return per_token, per_score, a if cpu_autocast else 4


def count_parameters(cfg: ModelConfig) -> tuple[int, int, int]:
    """(all parameters, the Linear weights among them, the parameters of one block), the tied embedding
    counted once: what ``GPT(cfg)`` has."""
    C, inner, bias = cfg.dim, cfg.n_heads * cfg.head_dim, int(cfg.bias)
    linear = 3 * inner * C + inner * C + 8 * C * C
    block = linear + bias * (3 * inner + C + 4 * C + C) + 2 * C * (1 + bias)
    embeddings = cfg.padded_vocab_size * C + (cfg.max_seq_len * C if cfg.position == "learned" else 0)
    total = embeddings + cfg.n_layers * block + C * (1 + bias)
    return total, cfg.n_layers * linear + cfg.padded_vocab_size * C, block


def estimate_memory(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int,
    precision: str,
    device_type: str,
    world_size: int = 1,
    softplus_kernel: bool | None = None,
) -> MemoryEstimate:
    """The peak memory of one process training ``cfg`` on micro-batches of ``batch_size x seq_len`` tokens in
    ``precision`` (fp32, amp_bf16, amp_fp16, bf16) on ``device_type`` (cuda, cpu), with ``world_size`` FSDP
    ranks; see the module docstring for the formula."""
    if batch_size < 1 or seq_len < 1 or world_size < 1:
        raise UserError(f"batch_size, seq_len and world_size must be >= 1, got {batch_size}, {seq_len}, {world_size}")
    dt = _dtypes(precision, world_size)
    C, L, V, Vp = cfg.dim, cfg.n_layers, cfg.vocab_size, cfg.padded_vocab_size
    inner, a, r = cfg.n_heads * cfg.head_dim, dt.act, dt.residual
    tokens, scores = batch_size * seq_len, batch_size * cfg.n_heads * seq_len * seq_len
    params, linear_weights, block_params = count_parameters(cfg)

    # Weights, gradients, moments: sharded evenly under FSDP.
    shard = -(-params // world_size)
    weights, gradients, optimizer = shard * dt.param, shard * dt.param, 2 * shard * dt.param
    working = linear_weights * a if dt.autocast else 0
    if world_size > 1:
        root_params = params - L * block_params
        gathered_params = root_params + min(FSDP_GATHERED_BLOCKS, L) * block_params
        working = gathered_params * (a + 4)  # compute-dtype weights, and their gradients reduced in fp32

    # What autograd keeps: per block, then the attention kind's own, then the head.
    path = attention_path(cfg, device_type, softplus_kernel)
    attn_token, attn_score, attn_backward = _attention_terms(cfg, path, dt, device_type)
    block_token = 2 * C * r + 2 * C * a + 4 * inner * a + 8 * C * a + 4 * r + attn_token
    if cfg.dropout > 0:
        # Masks of the embedding's and each block's two dropouts: bool on CUDA, in the input's dtype on the CPU.
        block_token += 2 * C * (1 if device_type == "cuda" else a)
    head_token = C * (r + a) + 2 * r + 4 * V + 8
    if cfg.dropout > 0:
        head_token += C * (1 if device_type == "cuda" else r)
    kept_scores = L * attn_score * scores
    activations = tokens * (L * block_token + head_token) + kept_scores

    # The largest set of temporaries: the loss's backward, or the last block's, whose MLP part holds two 4C
    # gradients and whose attention part holds the score gradients and those of q, k, v and the output, once
    # the block's MLP and second LayerNorm have let go of what they kept.
    logits = tokens * Vp * a  # the step keeps its logits until the next micro-batch
    loss_backward = logits + tokens * 2 * V * 4
    mlp_backward = tokens * 2 * 4 * C * a
    mlp_kept = tokens * (8 * C * a + C * (r + a) + 2 * r)
    attention_backward = scores * attn_backward + tokens * 4 * inner * a - mlp_kept
    temporaries = max(loss_backward, logits + max(mlp_backward, attention_backward))
    return MemoryEstimate(
        weights=weights, gradients=gradients, optimizer=optimizer, working_weights=int(working),
        activations=int(activations), scores=int(kept_scores), temporaries=int(temporaries),
    )


def compare_attention(
    preset: str,
    seq_len: int,
    batch_size: int,
    precision: str,
    device_type: str,
    vocab_size: int = 50257,
    kinds: tuple[str, ...] = ATTENTION_KINDS,
) -> dict[str, MemoryEstimate]:
    """The estimate of ``preset`` for each attention kind: the study's memory question on paper."""
    base = model_config_from_preset(preset, vocab_size=vocab_size)
    max_seq_len = max(seq_len, base.max_seq_len)
    return {
        kind: estimate_memory(
            model_config_from_preset(preset, vocab_size=vocab_size, attention=kind, max_seq_len=max_seq_len),
            batch_size, seq_len, precision, device_type,
        )
        for kind in kinds
    }


if __name__ == "__main__":  # python -m gpt2.training.memory: the same as python -m gpt2 memory
    from gpt2.cli import exit_process, run_command

    exit_process(lambda: run_command("memory"))
