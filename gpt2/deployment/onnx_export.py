"""Export a checkpoint to ONNX with its KV cache as explicit inputs and outputs.

One graph serves prefill and decode::

    input_ids      int64 [batch, query_len]
    past_keys      [n_layers, batch, n_heads, cache_len, head_dim]   (cache_len may be 0)
    past_values    [n_layers, batch, n_heads, cache_len, head_dim]
    ->
    logits         float32 [batch, query_len, vocab_size]
    present_keys   [n_layers, batch, n_heads, cache_len + query_len, head_dim]
    present_values [n_layers, batch, n_heads, cache_len + query_len, head_dim]

Positions start at ``cache_len`` (read from ``past_keys``' shape inside the graph): the
learned table is indexed by them, RoPE's cos/sin are computed from them; the causal mask,
ALiBi's bias and the length scale are built from the shapes, aligned bottom-right, so
nothing about the lengths is baked in (and for every position kind but learned, no length
is bounded: see :func:`export_model`). Attention runs through plain PyTorch ops (the fused
Triton kernel does not export): SDPA with an explicit additive mask for softmax, and for
softplus the reference's math in vectorisable elementwise ops (``Relu``, ``Abs``, ``Exp``,
``Log``).
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
from gpt2.checkpoint import Checkpoint, as_checkpoint, load_model
from gpt2.inference.artifacts import check_precision, checkpoint_identity, onnx_path
from gpt2.inference.graph_io import INPUT_NAMES, OUTPUT_NAMES
from gpt2.io import fsync_dir, fsync_file
from gpt2.model import GPT, ModelConfig

# opset 18: LayerNormalization (17) and everything else we emit; parsed by every TensorRT 10.x (opset <= 20)
# and ONNX Runtime. From opset 23 the exporter emits SDPA as the ONNX ``Attention`` op (TensorRT >= 10.15),
# which ONNX Runtime's CPU runs slower than the decomposition (docs/results.md, "Deployment on CPU").
DEFAULT_OPSET = 18


def export_attention(cfg: ModelConfig) -> AttentionFn:
    """The attention to trace for ``cfg``: its kind's plain-PyTorch form (see :mod:`gpt2.attention`)."""
    return get_attention_spec(cfg.attention).export


class _ConcatCache:
    """The model's cache interface over explicit tensors: each layer returns past + new, and keeps it."""

    def __init__(self, past_keys: torch.Tensor, past_values: torch.Tensor) -> None:
        self.past_keys, self.past_values = past_keys, past_values
        self.pos = past_keys.shape[3]
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.cat([self.past_keys[layer], k], dim=2)
        v = torch.cat([self.past_values[layer], v], dim=2)
        self.keys.append(k)
        self.values.append(v)
        return k, v

    def advance(self, n: int) -> None:
        pass  # the new length is in the shapes


class ExportableGPT(nn.Module):
    """``GPT`` with the cache as tensors in and out; shares the model's blocks.

    The top of ``GPT.forward`` is restated here (embeddings, final norm, head) so that the tied
    embedding is exported without its padding rows, positions come from the cache length, and
    no Python-side length check is traced.
    """

    def __init__(self, model: GPT) -> None:
        super().__init__()
        cfg = model.cfg
        self.cfg = cfg
        self.embedding = nn.Parameter(model.tok_emb.weight.detach()[: cfg.vocab_size].clone())
        self.pos_emb, self.blocks, self.ln_f = model.pos_emb, model.blocks, model.ln_f
        self.relative_positions = model.relative_positions  # a method, not a submodule: no padded weights
        attend = export_attention(cfg)
        for block in self.blocks:
            block.attn.attend = attend

    def forward(
        self, input_ids: torch.Tensor, past_keys: torch.Tensor, past_values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cache = _ConcatCache(past_keys, past_values)
        positions = torch.arange(cache.pos, cache.pos + input_ids.shape[1], device=input_ids.device)
        x = F.embedding(input_ids, self.embedding)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        relative = self.relative_positions(positions)
        for block in self.blocks:
            x = block(x, cache, relative)
        logits = F.linear(self.ln_f(x), self.embedding).float()
        return logits, torch.stack(cache.keys), torch.stack(cache.values)


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
    """The symbolic shape of each graph input and output (``None``: any symbolic name)."""
    cache = [cfg.n_layers, "batch", cfg.n_heads, "cache_len", cfg.head_dim]
    present = [cfg.n_layers, "batch", cfg.n_heads, None, cfg.head_dim]
    return {
        "input_ids": ["batch", "query_len"],
        "past_keys": cache,
        "past_values": cache,
        "logits": ["batch", "query_len", cfg.vocab_size],
        "present_keys": present,
        "present_values": present,
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
        elif len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want, strict=False)):
            problems.append(f"{name} has dims {got}, expected {want}")
        elif None in want and not isinstance(got[want.index(None)], str):
            problems.append(f"{name} has a fixed length {got}; it must grow with the cache")
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
    batch, query, cache = 2, 3, 4
    cache_shape = (cfg.n_layers, batch, cfg.n_heads, cache, cfg.head_dim)
    example = (
        torch.zeros(batch, query, dtype=torch.long),
        torch.zeros(cache_shape, dtype=dtype),
        torch.zeros(cache_shape, dtype=dtype),
    )
    # Learned positions are a table of max_seq_len rows, which bounds both lengths. The other encodings compute
    # everything from the shapes (RoPE's cos/sin from cache_len, ALiBi's bias and the length scale from the
    # query and key lengths), so their lengths are declared unbounded (torch.export's default): the exporter
    # may reason from a declared range, and these graphs must hold at any length (a model trained at T reads
    # 16T). The ONNX graph itself records only the symbolic names; graph_io enforces the learned bound.
    limit = cfg.max_positions
    b = Dim("batch", min=1)
    q = Dim("query_len", min=1, max=limit)
    c = Dim("cache_len", min=0, max=None if limit is None else limit - 1)
    dynamic_shapes = {"input_ids": {0: b, 1: q}, "past_keys": {1: b, 3: c}, "past_values": {1: b, 3: c}}
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            example,
            dynamo=True,
            input_names=list(INPUT_NAMES),
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
