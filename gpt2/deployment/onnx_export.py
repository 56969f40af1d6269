"""Export a checkpoint to ONNX with its KV cache as explicit inputs and outputs.

One graph serves prefill and decode::

    input_ids        int64 [batch, query_len]
    cache_len        int64 []                                   positions filled in the past buffers
    past_keys_<l>    [batch, n_heads, capacity, head_dim]       l = 0 .. n_layers - 1 (capacity may be 0)
    past_values_<l>  [batch, n_heads, capacity, head_dim]
    ->
    logits           float32 [batch, query_len, vocab_size]
    new_keys         [n_layers, batch, n_heads, query_len, head_dim]
    new_values       [n_layers, batch, n_heads, query_len, head_dim]

The past buffers hold ``capacity >= cache_len`` positions, of which the graph reads the first ``cache_len``
(the others must be finite, and are masked), and it returns only the new tokens' keys and values: the
caller keeps the cache and writes them after the filled positions (:class:`~gpt2.inference.graph_io.GraphState`).
So a decode step copies no cache: a graph that returned ``past + new`` concatenated (or took one stacked
buffer for all layers, which it must slice) copied the whole cache on every step, in ONNX Runtime more time
than the rest of the step. Positions start at ``cache_len``: the learned table is indexed by them, RoPE's
cos/sin are computed from them, and so are the causal mask, ALiBi's bias and the length scale, so nothing
about the lengths is baked in (and for every position kind but learned, no length is bounded: see
:func:`export_model`). Attention runs through plain PyTorch ops over the two parts of the cache (the fused
Triton kernel does not export; see :mod:`gpt2.attention.split_cache`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2.attention import AttentionFn, get_attention_spec
from gpt2.attention.split_cache import split_cache_mask
from gpt2.checkpoint import Checkpoint, as_checkpoint, load_model
from gpt2.inference.artifacts import check_precision, checkpoint_identity, onnx_path
from gpt2.inference.graph_io import OUTPUT_NAMES, input_names, past_names
from gpt2.io import fsync_dir, fsync_file
from gpt2.model import GPT, ModelConfig

# opset 18: LayerNormalization (17) and everything else we emit; parsed by every TensorRT 10.x (opset <= 20)
# and ONNX Runtime. From opset 23 the exporter emits SDPA as the ONNX ``Attention`` op (TensorRT >= 10.15),
# which ONNX Runtime's CPU runs slower than the decomposition (docs/results.md, "Deployment on CPU").
DEFAULT_OPSET = 18


def export_attention(cfg: ModelConfig) -> AttentionFn:
    """The attention to trace for ``cfg``: its kind's plain-PyTorch form (see :mod:`gpt2.attention`)."""
    return get_attention_spec(cfg.attention).export


class ExportableGPT(nn.Module):
    """``GPT`` with the cache as tensors in and out; shares the model's blocks.

    ``GPT.forward`` (its top: embeddings, final norm, head) and ``Block.forward`` are restated here, so that
    the tied embedding is exported without its padding rows, positions come from ``cache_len``, no
    Python-side length check is traced, and attention reads the past and the new keys without joining them.
    """

    def __init__(self, model: GPT) -> None:
        super().__init__()
        cfg = model.cfg
        self.cfg = cfg
        self.embedding = nn.Parameter(model.tok_emb.weight.detach()[: cfg.vocab_size].clone())
        self.pos_emb, self.blocks, self.ln_f = model.pos_emb, model.blocks, model.ln_f
        self.relative_positions = model.relative_positions  # a method, not a submodule: no padded weights
        self.attend = export_attention(cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        cache_len: torch.Tensor,
        past_keys: list[torch.Tensor],
        past_values: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T = input_ids.shape
        positions = torch.arange(T, device=input_ids.device) + cache_len
        x = F.embedding(input_ids, self.embedding)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        relative = self.relative_positions(positions)
        capacity = past_keys[0].shape[2]
        mask = split_cache_mask(cache_len, T, capacity, x.device, self.cfg.length_base, relative.alibi_slopes)
        new_keys, new_values = [], []
        for block, k_past, v_past in zip(self.blocks, past_keys, past_values, strict=True):
            attn = block.attn
            q, k, v, _ = attn.project(block.ln_1(x), relative)
            new_keys.append(k)
            new_values.append(v)
            y = self.attend(q, k_past, v_past, k, v, mask)
            x = x + attn.proj(y.transpose(1, 2).reshape(B, T, attn.n_heads * attn.head_dim))
            x = x + block.mlp(block.ln_2(x))
        logits = F.linear(self.ln_f(x), self.embedding).float()
        return logits, torch.stack(new_keys), torch.stack(new_values)


@dataclass(frozen=True)
class OnnxGraphInfo:
    """What :func:`check_onnx` verified about an exported graph."""

    path: Path
    opset: int
    inputs: dict[str, list[str | int]]
    outputs: dict[str, list[str | int]]
    metadata: dict[str, str]
    size_bytes: int


def expected_dims(cfg: ModelConfig) -> dict[str, list[str | int]]:
    """The symbolic shape of each graph input and output."""
    past = ["batch", cfg.n_heads, "capacity", cfg.head_dim]
    new = [cfg.n_layers, "batch", cfg.n_heads, "query_len", cfg.head_dim]
    return {
        "input_ids": ["batch", "query_len"],
        "cache_len": [],
        **{name: past for name in past_names(cfg.n_layers)},
        "logits": ["batch", "query_len", cfg.vocab_size],
        "new_keys": new,
        "new_values": new,
    }


def _dims(value_info: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_onnx(path: str | Path, cfg: ModelConfig | None = None) -> OnnxGraphInfo:
    """Run ``onnx.checker`` (full check) and strict shape inference, and check the named dynamic dims."""
    path = Path(path)
    onnx.checker.check_model(str(path), full_check=True)  # by path: works for external-data models too
    model = onnx.load(str(path), load_external_data=False)  # shape inference needs no weights
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    metadata = {p.key: p.value for p in model.metadata_props}
    if cfg is None:
        cfg = ModelConfig.from_dict(json.loads(metadata["gpt2.model_config"]))
    inputs = {v.name: _dims(v) for v in inferred.graph.input}
    outputs = {v.name: _dims(v) for v in inferred.graph.output}
    problems = []
    for name, want in expected_dims(cfg).items():
        got = inputs.get(name, outputs.get(name))
        if got is None:
            problems.append(f"{name} is missing")
        elif got != want:
            problems.append(f"{name} has dims {got}, expected {want}")
    if problems:
        raise ValueError(
            f"{path}: the exported graph does not have the expected interface: " + "; ".join(problems)
        )
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return OnnxGraphInfo(path, opset, inputs, outputs, metadata, size)


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` (weights are not read)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's routine chatter (torchvision op registration, dim-name notes)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_model(
    model: GPT, path: str | Path, metadata: dict[str, str] | None = None, opset: int = DEFAULT_OPSET
) -> Path:
    """Export ``model`` (in the dtype it is in) to ``path``; written atomically, weights external over 2 GB.

    The model's attention is switched to its exportable form (see :func:`export_attention`).
    """
    from torch.export import Dim

    path = Path(path)
    cfg = model.cfg
    wrapper = ExportableGPT(model).eval()
    dtype = wrapper.embedding.dtype
    # Trace with distinct sizes >= 2 on every dynamic axis: sizes 0 and 1 (or equal sizes) get specialised.
    batch, query, capacity = 2, 3, 5
    past = [torch.zeros(batch, cfg.n_heads, capacity, cfg.head_dim, dtype=dtype) for _ in range(cfg.n_layers)]
    example = (torch.zeros(batch, query, dtype=torch.long), torch.tensor(4), past, [p.clone() for p in past])
    # Learned positions are a table of max_seq_len rows, which bounds both lengths. The other encodings compute
    # everything from cache_len and the query length (RoPE's cos/sin, ALiBi's bias, the length scale), so their
    # lengths are declared unbounded (torch.export's default): the exporter may reason from a declared range,
    # and these graphs must hold at any length (a model trained at T reads 16T). The ONNX graph itself records
    # only the symbolic names; graph_io enforces the learned bound.
    limit = cfg.max_positions
    b = Dim("batch", min=1)
    q = Dim("query_len", min=1, max=limit)
    c = Dim("capacity", min=0, max=limit)
    per_layer = [{0: b, 2: c}] * cfg.n_layers
    dynamic_shapes = {"input_ids": {0: b, 1: q}, "cache_len": None, "past_keys": per_layer, "past_values": per_layer}
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            example,
            dynamo=True,
            input_names=input_names(cfg.n_layers),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes,
            opset_version=opset,
            verbose=False,
        )
    program.model.metadata_props.update(metadata or {})
    # Save into a scratch folder and move into place: an interrupted export never leaves a half-written
    # file under the final name (the .onnx and its external .data must also keep matching names).
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        tmp_path = Path(tmp) / path.name
        program.save(tmp_path)
        for file in Path(tmp).iterdir():
            fsync_file(file)
        for old in path.parent.glob(path.name + "*"):
            old.unlink()
        for file in sorted(Path(tmp).iterdir(), key=lambda p: p.suffix == ".onnx"):  # the .onnx last
            shutil.move(str(file), path.parent / file.name)
    fsync_dir(path.parent)
    return path


def export_checkpoint(
    checkpoint: str | Path | Checkpoint,
    precision: str = "fp32",
    path: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
) -> tuple[Path, OnnxGraphInfo]:
    """Export a checkpoint at ``precision`` (default: ``CKPT/export/model.<precision>.onnx``) and check it."""
    dtype = check_precision(precision)
    ckpt = as_checkpoint(checkpoint)
    model, _ = load_model(ckpt, "cpu", dtype)
    path = Path(path) if path else onnx_path(ckpt, precision)
    export_model(
        model.eval(), path, {**checkpoint_identity(ckpt, precision), "gpt2.opset": str(opset)}, opset
    )
    return path, check_onnx(path, ckpt.model_config)
