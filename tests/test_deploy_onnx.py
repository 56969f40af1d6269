"""Deployment on real components: ONNX export of both attention kinds, ONNX Runtime against PyTorch,
the accuracy check, the deploy command and its bad inputs.

The fixtures start from the shared ``corpus`` (the bundled excerpt through prepare, train-tokenizer and
encode): two tiny models (softmax, softplus) are trained for a few steps and saved as checkpoints that
record their eval set, each exported once.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from gpt2 import checkpoint
from gpt2.checkpoint import CheckpointError, as_checkpoint, load_model, save_checkpoint
from gpt2.cli import main as cli
from gpt2.data.loader import eval_batches as real_eval_batches
from gpt2.deployment.benchmark import benchmark_backend, format_table
from gpt2.deployment.onnx_export import check_onnx, export_checkpoint
from gpt2.deployment.validate import TOLERANCES, Tolerance, validate, validation_calls
from gpt2.device import resolve_device
from gpt2.errors import UserError
from gpt2.generation.generate import generate
from gpt2.generation.sampling import SamplingConfig
from gpt2.inference import TorchBackend, open_backend
from gpt2.inference.artifacts import StaleExportError, onnx_path
from gpt2.inference.exports import load_backend, pick_export_precision
from gpt2.inference.graph_io import OUTPUT_NAMES, GraphDims, output_shapes
from gpt2.inference.ort import OrtBackend
from gpt2.inference.profiles import ProfileConfig, profile_shapes, resolve_profile
from gpt2.model import GPT, ModelConfig
from tests.conftest import CORPUS_VOCAB as VOCAB  # padded to 512 rows in the model, never in the export

pytestmark = pytest.mark.e2e  # trained checkpoints, exported and run in ONNX Runtime, the deploy command

KINDS = ("softmax", "softplus")
SEQ = 64


def tiny_config(attention: str, **overrides) -> ModelConfig:
    shape = dict(n_layers=2, dim=64, n_heads=4, max_seq_len=128)
    return ModelConfig(vocab_size=VOCAB, attention=attention, **{**shape, **overrides})


@pytest.fixture(scope="session")
def checkpoints(corpus, tmp_path_factory) -> dict[str, Path]:
    """One tiny model per attention kind, trained 40 steps; its checkpoint records the eval set."""
    tokens = torch.from_numpy(corpus.train.tokens.astype(np.int64))
    data = {"data": {"train": str(corpus.train.path), "eval": str(corpus.eval.path)}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: OpenMP synchronisation would cost more than it saves
    try:
        paths = {}
        for kind in KINDS:
            torch.manual_seed(0)
            model = GPT(tiny_config(kind))
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
            for _ in range(40):
                starts = torch.randint(0, len(tokens) - SEQ - 1, (16, 1)) + torch.arange(SEQ + 1)
                windows = tokens[starts]
                loss = F.cross_entropy(model(windows[:, :-1]).flatten(0, 1), windows[:, 1:].flatten())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            run_dir = tmp_path_factory.mktemp(kind)
            paths[kind] = save_checkpoint(run_dir, 40, model.eval(), None, corpus.tokenizer, meta=data)
    finally:
        torch.set_num_threads(threads)
    return paths


@pytest.fixture(scope="session")
def eval_batches(corpus) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(real_eval_batches(corpus.eval, SEQ, batch_size=4, max_batches=2))


@pytest.fixture(scope="session")
def exported(checkpoints) -> dict[str, Path]:
    return {kind: export_checkpoint(path, "fp32")[0] for kind, path in checkpoints.items()}


@pytest.fixture(scope="session")
def half_exports(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """A copy of the softplus checkpoint (``"checkpoint"``) exported in fp16 (deploy_gpt2.sh's default) and bf16
    (for TensorRT); the shared checkpoints keep their fp32 exports only."""
    ckpt = copy_checkpoint(checkpoints["softplus"], tmp_path_factory.mktemp("half"))
    return {"checkpoint": ckpt, **{p: export_checkpoint(ckpt, p)[0] for p in ("fp16", "bf16")}}


def reference(checkpoint: Path) -> TorchBackend:
    return TorchBackend(load_model(checkpoint)[0])


# --- export -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_export_passes_checker_and_shape_inference_with_named_dynamic_dims(kind, checkpoints, exported):
    info = check_onnx(exported[kind])  # onnx.checker (full) + strict shape inference + interface
    past = ["batch", 4, "capacity", 16]  # one buffer per layer: no graph op slices a stacked cache
    assert info.inputs == {
        "input_ids": ["batch", "query_len"],
        "cache_len": [],
        **{f"past_{kind}_{layer}": past for kind in ("keys", "values") for layer in range(2)},
    }
    assert info.outputs["logits"] == ["batch", "query_len", VOCAB]  # padded vocabulary rows are not exported
    assert info.outputs["new_keys"] == info.outputs["new_values"] == [2, "batch", 4, "query_len", 16]
    assert info.metadata["gpt2.checkpoint_step"] == "40" and info.metadata["gpt2.precision"] == "fp32"

    graph = onnx.load(str(exported[kind]))
    ops = {node.op_type for node in graph.graph.node}
    assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node)  # standard ops only, no custom op
    # softplus as max(s, 0) + log(1 + exp(-|s|)): vectorised elementwise ops (ONNX Runtime's Softplus is not);
    # softmax as exp(s - max) over the past's and the new keys' scores, each normalised by both parts' sums
    assert ({"Relu", "Log"} <= ops) == (kind == "softplus") and {"Exp", "ReduceMax", "ReduceSum"} <= ops
    assert not {"Softplus", "Softmax"} & ops
    shapes = [list(i.dims) for i in graph.graph.initializer]
    assert [VOCAB, 64] in shapes and [512, 64] not in shapes  # the tied embedding, without its padding rows


def test_softplus_export_keeps_weights_below_float_resolution(corpus, tmp_path):
    """Scores of about -41 give weights e^-41, far under the 6e-8 that 1 + w can resolve in fp32: a plain
    log(1 + exp(s)) makes them 0 and every row 0 / 0. The export must agree with PyTorch's softplus."""
    cfg = tiny_config("softplus")
    torch.manual_seed(2)
    model = GPT(cfg).eval()
    inner = cfg.n_heads * cfg.head_dim
    with torch.no_grad():
        for block in model.blocks:  # q = -3.2 and k = 3.2 everywhere: s = -3.2^2 * head_dim / sqrt(head_dim)
            block.attn.qkv.weight[: 2 * inner].zero_()
            block.attn.qkv.bias[:inner], block.attn.qkv.bias[inner : 2 * inner] = -3.2, 3.2
    ckpt = save_checkpoint(tmp_path, 1, model, None, corpus.tokenizer)
    export_checkpoint(ckpt, "fp32")
    tokens = corpus.eval_ids(40).view(2, 20)
    expected = reference(ckpt).forward(tokens)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(load_backend("onnxruntime", ckpt).forward(tokens), expected, atol=1e-4, rtol=1e-4)


# --- ONNX Runtime against PyTorch ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_ort_matches_pytorch_on_prefill_and_on_decode_with_a_cache(kind, checkpoints, exported, eval_batches):
    ort_backend, torch_backend = load_backend("onnxruntime", checkpoints[kind]), reference(checkpoints[kind])
    tokens = eval_batches[0][0]
    full = torch_backend.forward(tokens)

    state = ort_backend.new_state(4, SEQ)
    assert state.pos == 0  # prefill runs against an empty (cache_len 0) cache
    prefill = ort_backend.forward(tokens[:, :40], state)
    assert state.pos == 40 and state.keys.shape == (2, 4, 4, SEQ, 16)  # one buffer, filled in place from here
    step = ort_backend.forward(tokens[:, 40:41], state)  # decode: one token, 40 cached
    chunk = ort_backend.forward(tokens[:, 41:], state)  # several tokens against a cache
    assert prefill.dtype == torch.float32 and state.pos == SEQ
    torch.testing.assert_close(prefill, full[:, :40], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat([step, chunk], dim=1), full[:, 40:], atol=1e-4, rtol=1e-4)
    assert (prefill - full[:, :40]).abs().max() > 0  # two implementations, not one run twice


def test_two_caches_decoded_in_turn_on_one_backend_keep_apart(checkpoints, exported, eval_batches):
    """The backend rebinds only the inputs whose tensors moved since its last call: each cache must still be
    the one its call reads, whatever was bound before."""
    ort_backend = load_backend("onnxruntime", checkpoints["softplus"])
    tokens = eval_batches[0][0]
    full = reference(checkpoints["softplus"]).forward(tokens)
    a, b = ort_backend.new_state(4, SEQ), ort_backend.new_state(2, SEQ)
    logits_a, logits_b = [ort_backend.forward(tokens[:, :20], a)], [ort_backend.forward(tokens[:2, :30], b)]
    for i in range(4):
        logits_a.append(ort_backend.forward(tokens[:, 20 + i : 21 + i], a))
        logits_b.append(ort_backend.forward(tokens[:2, 30 + i : 31 + i], b))
    torch.testing.assert_close(torch.cat(logits_a, dim=1), full[:, :24], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.cat(logits_b, dim=1), full[:2, :34], atol=1e-4, rtol=1e-4)


def test_sizes_the_export_never_traced_work(checkpoints, exported, corpus):
    """Traced with batch 2, query 3, cache 4: batch 1, query 1, cache 0 and max_seq_len must still run."""
    ort_backend, torch_backend = (
        load_backend("onnxruntime", checkpoints["softmax"]),
        reference(checkpoints["softmax"]),
    )
    one = corpus.eval_ids(1).view(1, 1)
    torch.testing.assert_close(ort_backend.forward(one), torch_backend.forward(one), atol=1e-4, rtol=1e-4)
    longest = corpus.eval_ids(128).view(1, 128)
    torch.testing.assert_close(
        ort_backend.forward(longest), torch_backend.forward(longest), atol=1e-4, rtol=1e-4
    )
    state = ort_backend.new_state(1, 128)
    ort_backend.forward(longest[:, :127], state)
    with pytest.raises(ValueError, match="KV cache full"):
        ort_backend.forward(longest[:, :2], state)


@pytest.mark.parametrize("kind", KINDS)
def test_the_graph_reads_only_the_filled_part_of_the_past_buffers(kind, checkpoints, exported, corpus):
    """The backend's buffers hold more positions than are filled (zeros after cache_len); whatever is there,
    the graph must mask it: the result equals that of buffers holding the filled positions only."""
    backend = load_backend("onnxruntime", checkpoints[kind])
    tokens = corpus.eval_ids(28).view(2, 14)
    state = backend.new_state(2, 40)
    backend.forward(tokens[:, :12], state)
    assert state.pos == 12 and state.capacity == 40  # the next calls write into this buffer in place
    noise = torch.randn(state.keys.shape, generator=torch.Generator().manual_seed(0)) * 10
    runs = {}
    for name, past_of in (
        ("filled", lambda buffer, layer: buffer[layer][:, :, :12]),
        ("noisy", lambda buffer, layer: torch.cat([buffer[layer][:, :, :12], noise[layer][:, :, 12:]], dim=2)),
    ):
        feeds = {"input_ids": tokens[:, 12:].numpy(), "cache_len": np.array(12, dtype=np.int64)}
        for kind_name, buffer in (("keys", state.keys), ("values", state.values)):
            feeds.update({f"past_{kind_name}_{i}": past_of(buffer, i).contiguous().numpy() for i in range(2)})
        runs[name] = dict(zip(OUTPUT_NAMES, backend.session.run(None, feeds), strict=True))
    assert feeds["past_keys_0"].shape[2] == 40 and np.abs(feeds["past_keys_0"][:, :, 12:]).max() > 1
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(runs["noisy"][name], runs["filled"][name], rtol=1e-5, atol=1e-5)
    expected = reference(checkpoints[kind]).forward(tokens)[:, 12:]
    torch.testing.assert_close(torch.from_numpy(runs["noisy"]["logits"]), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_validate_passes_in_fp32_loss_and_64_greedy_tokens(kind, checkpoints, exported, eval_batches):
    report = validate(
        reference(checkpoints[kind]), load_backend("onnxruntime", checkpoints[kind]), eval_batches
    )
    assert report.passed, report.summary()
    assert report.loss_diff <= 1e-4 and report.prefill_max_abs < 1e-4 and report.decode_max_abs < 1e-4
    assert report.greedy_steps == 64 and report.greedy_matching == 64
    assert report.loss_reference < math.log(VOCAB) - 0.5  # it has learned something


def test_validate_fails_for_a_model_that_differs(checkpoints, exported, eval_batches):
    softplus_in_ort = load_backend("onnxruntime", checkpoints["softplus"])
    report = validate(reference(checkpoints["softmax"]), softplus_in_ort, eval_batches)
    assert not report.passed
    assert any("logits" in f for f in report.failures) and any("eval loss" in f for f in report.failures)


def test_validate_fails_in_fp32_on_greedy_divergence_alone(checkpoints, exported, eval_batches, monkeypatch):
    # Logits and loss bounds that anything meets: the greedy check must fail the report on its own. The
    # reference is an untrained model (the two trained ones both settle on the same greedy continuation).
    monkeypatch.setitem(TOLERANCES, "fp32", Tolerance(math.inf, math.inf, math.inf, greedy_identical=True))
    torch.manual_seed(3)
    untrained = TorchBackend(GPT(tiny_config("softmax")).eval())
    report = validate(untrained, load_backend("onnxruntime", checkpoints["softmax"]), eval_batches)
    assert report.greedy_matching < report.greedy_steps == 64  # the two models do generate differently
    assert report.failures == [f"greedy generation diverges at step {report.greedy_matching} of 64"]
    assert not report.passed and report.summary().endswith(report.failures[0])


def test_fp16_export_runs_in_ort_within_the_fp16_thresholds(half_exports, eval_batches):
    ckpt, info = half_exports["checkpoint"], check_onnx(half_exports["fp16"])
    assert half_exports["fp16"].name == "model.fp16.onnx" and info.metadata["gpt2.precision"] == "fp16"
    backend = load_backend("onnxruntime", ckpt, precision="fp16")
    assert backend.cache_dtype == torch.float16
    report = validate(reference(ckpt), backend, eval_batches, precision="fp16")
    assert report.passed, report.summary()
    assert 1e-5 < report.prefill_max_abs < 1e-1  # really fp16: off by more than fp32 rounding, within bounds


def test_bf16_exports_and_onnxruntime_cpu_refuses_it_clearly(half_exports):
    info = check_onnx(half_exports["bf16"])  # for TensorRT; checked all the same
    assert info.metadata["gpt2.precision"] == "bf16" and info.inputs["past_keys_0"][2] == "capacity"
    with pytest.raises(UserError, match="ONNX Runtime cannot load .*model.bf16.onnx on cpu"):
        load_backend("onnxruntime", half_exports["checkpoint"], precision="bf16")


def test_generate_through_the_onnxruntime_backend(checkpoints, exported, corpus):
    """What `generate --backend onnxruntime` runs: the lead's open_backend and generate on our backend."""
    backend = open_backend(str(checkpoints["softplus"]), "onnxruntime", "cpu")
    assert isinstance(backend, OrtBackend)
    torch_backend = reference(checkpoints["softplus"])
    prompt = corpus.eval_ids(10).tolist()
    for sampling in (SamplingConfig(temperature=0.0), SamplingConfig(temperature=1.0, top_k=50)):
        ours = generate(backend, prompt, 30, sampling, num_samples=2, seed=7)
        assert ours == generate(torch_backend, prompt, 30, sampling, num_samples=2, seed=7)
    assert ours[0] != ours[1] and len(set(ours[0])) > 5  # sampled: the same draws from the same distribution


def test_generation_reaches_the_last_position_through_onnxruntime(checkpoints, exported, corpus):
    """A max_seq_len prompt still gets one new token; the cache holds exactly the positions fed back."""
    backend, torch_backend = load_backend("onnxruntime", checkpoints["softmax"]), reference(checkpoints["softmax"])
    prompt = corpus.eval_ids(128).tolist()
    greedy = SamplingConfig(temperature=0.0)
    assert generate(backend, prompt, 1, greedy) == generate(torch_backend, prompt, 1, greedy)
    ours = generate(backend, prompt[:100], 29, greedy)  # 128 positions
    assert ours == generate(torch_backend, prompt[:100], 29, greedy) and len(ours[0]) == 29
    with pytest.raises(UserError, match="- 1 = 129 positions"):
        generate(backend, prompt[:100], 30, greedy)


def copy_checkpoint(checkpoint: Path, run_dir: Path) -> Path:
    """The checkpoint in another run folder, without its exports."""
    copy = run_dir / checkpoint.parent.name / checkpoint.name
    shutil.copytree(checkpoint, copy, ignore=shutil.ignore_patterns("export"))
    return copy


def copy_export(export: Path, checkpoint: Path) -> None:
    """An export (its .onnx and any external data) into ``checkpoint``'s export folder, as deploy leaves it."""
    (checkpoint / "export").mkdir(exist_ok=True)
    for file in export.parent.glob(export.name + "*"):
        shutil.copy2(file, checkpoint / "export" / file.name)


def test_generate_and_evaluate_open_the_export_deploy_made(checkpoints, exported, half_exports, tmp_path, capsys):
    """deploy_gpt2.sh exports fp16 by default: generate/evaluate find it, or use the one --precision names."""
    ckpt = copy_checkpoint(checkpoints["softplus"], tmp_path / "run")
    copy_export(half_exports["fp16"], ckpt)
    assert pick_export_precision("onnxruntime", ckpt) == "fp16"  # the only export
    assert open_backend(str(ckpt), "onnxruntime", "cpu").cache_dtype == torch.float16
    out = tmp_path / "samples.jsonl"
    args = ["--prompt", "The", "--max_new_tokens", "5", "--temperature", "0", "--output", str(out)]
    assert cli(["generate", str(ckpt), "--backend", "onnxruntime", "--device", "cpu", *args]) == 0
    assert json.loads(out.read_text().splitlines()[0])["tokens"] > 0
    report = tmp_path / "eval.json"
    flags = ["--max_batches", "1", "--batch_size", "2", "--device", "cpu", "--output", str(report)]
    assert cli(["evaluate", str(ckpt), "--backend", "onnxruntime", "--precision", "fp16", *flags]) == 0
    fp16_loss = json.loads(report.read_text())["loss"]
    assert cli(["evaluate", str(ckpt), *flags]) == 0  # PyTorch, fp32
    assert json.loads(report.read_text())["loss"] == pytest.approx(fp16_loss, abs=1e-2)
    # Without --output, each precision gets its own report (auto: the fp16 export, the only one).
    flags = flags[:-2]
    assert cli(["evaluate", str(ckpt), "--backend", "onnxruntime", *flags]) == 0
    assert cli(["evaluate", str(ckpt), "--backend", "onnxruntime", "--precision", "fp16", *flags]) == 0
    reports = sorted(p.name for p in ckpt.parent.parent.glob("eval_*.json"))
    assert reports == [f"eval_{ckpt.name}_onnxruntime_fp16_first1x2.json"]
    assert json.loads((ckpt.parent.parent / reports[0]).read_text())["precision"] == "fp16"
    assert cli(["generate", str(ckpt), "--backend", "onnxruntime", "--precision", "fp32", *args]) == 2
    assert re.search("no onnxruntime export at .*model.fp32.onnx \\(found: model.fp16.onnx\\)", capsys.readouterr().err)

    copy_export(half_exports["bf16"], ckpt)  # two exports and no fp32: auto cannot choose
    with pytest.raises(UserError, match="exports in fp16, bf16 and none in fp32; choose one with --precision"):
        open_backend(str(ckpt), "onnxruntime", "cpu")
    assert open_backend(str(ckpt), "onnxruntime", "cpu", "fp16").cache_dtype == torch.float16
    copy_export(exported["softplus"], ckpt)  # fp32 is preferred whenever it exists
    assert open_backend(str(ckpt), "onnxruntime", "cpu").cache_dtype == torch.float32
    assert pick_export_precision("tensorrt", ckpt) == "fp32"  # no engine: the fp32 one is what is missing


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num_samples", "0"], "num_samples must be >= 1, got 0"),
        (["--max_new_tokens", "-5"], "max_new_tokens must be >= 0, got -5"),
        (["--device", "gpu"], "'gpu' is not a device"),
        (["--backend", "onnxruntime", "--precision", "fp16", "--device", "cpu"], "no onnxruntime export at"),
    ],
)
def test_bad_generate_flags_give_clear_errors(flags, message, checkpoints, capsys):
    assert cli(["generate", str(checkpoints["softplus"]), "--prompt", "The", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_cuda_without_a_gpu_is_a_clear_error(command, checkpoints, capsys):
    assert cli([command, str(checkpoints["softplus"]), "--device", "cuda"]) == 2
    assert "error: --device cuda: no CUDA GPU is visible" in capsys.readouterr().err
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")


# --- positions other than learned: sequences longer than max_seq_len ----------------------------------

TRAIN_LEN = 16  # the max_seq_len of these models; they are run at 16 times that
# Every position kind; ALiBi's bias with both attention kinds (it enters their scores); the length scale with
# both (log(n)/log(64) differs at every position, and multiplies ALiBi's bias too). RoPE rotates q and k before
# attention, whatever its kind.
POSITION_CASES = [
    ("none", "softplus", 64.0),
    ("alibi", "softmax", 64.0),
    ("alibi", "softplus", None),
    ("rope", "softmax", None),
]


@pytest.fixture(scope="session")
def position_checkpoint(corpus, tmp_path_factory) -> Callable[..., Path]:
    """``make(position, attention, length_base)``: the checkpoint of a tiny model with that position encoding,
    saved and exported (fp32) on first use; the export is the slow part, so each case is made once."""
    made: dict[tuple[str, str, float | None], Path] = {}

    def make(position: str, attention: str, length_base: float | None = None) -> Path:
        key = (position, attention, length_base)
        if key not in made:
            torch.manual_seed(3)
            cfg = tiny_config(attention, position=position, length_base=length_base, max_seq_len=TRAIN_LEN)
            model = GPT(cfg).eval()
            with torch.no_grad():  # larger than GPT-2's init: peaked attention and O(1) logits, so errors show
                for p in model.parameters():
                    if p.dim() > 1:
                        p.normal_(std=0.1)
            run_dir = tmp_path_factory.mktemp(f"{position}-{attention}")
            data = {"data": {"eval": str(corpus.eval.path)}}
            made[key] = save_checkpoint(run_dir, 1, model, None, corpus.tokenizer, meta=data)
            export_checkpoint(made[key], "fp32")
        return made[key]

    return make


@pytest.mark.parametrize(("position", "attention", "length_base"), POSITION_CASES)
def test_ort_matches_pytorch_at_16_times_max_seq_len(position, attention, length_base, position_checkpoint, corpus):
    """Prefill, decode and generation through the export past the training length: RoPE's cos/sin come from
    the cache length inside the graph, ALiBi's bias and the length scale from the shapes, no length is fixed."""
    ckpt = position_checkpoint(position, attention, length_base)
    graph = onnx.load(str(check_onnx(onnx_path(as_checkpoint(ckpt), "fp32")).path))
    assert ({"Cos", "Sin"} <= {node.op_type for node in graph.graph.node}) == (position == "rope")
    ort_backend, torch_backend = load_backend("onnxruntime", ckpt), reference(ckpt)
    assert ort_backend.max_positions is None and ort_backend.max_seq_len == TRAIN_LEN
    n = 16 * TRAIN_LEN
    tokens = corpus.eval_ids(2 * n).view(2, n)
    full = torch_backend.forward(tokens)
    torch.testing.assert_close(ort_backend.forward(tokens), full, atol=1e-4, rtol=1e-4)  # one prefill, no cache

    state = ort_backend.new_state(2, n)  # the cache is sized by the request, not by max_seq_len
    pieces = [ort_backend.forward(tokens[:, a:b], state) for a, b in ((0, 10), (10, 11), (11, n - 1), (n - 1, n))]
    assert state.pos == n
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)
    assert (pieces[0] - full[:, :10]).abs().max() > 0  # two implementations, not one run twice

    prompt, greedy = tokens[0, :8].tolist(), SamplingConfig(temperature=0.0)
    ours = generate(ort_backend, prompt, 4 * TRAIN_LEN, greedy)
    assert ours == generate(torch_backend, prompt, 4 * TRAIN_LEN, greedy) and len(ours[0]) == 4 * TRAIN_LEN


def test_deploy_validates_and_profiles_past_max_seq_len_without_learned_positions(position_checkpoint, tmp_path,
                                                                                  capsys):
    """deploy's length flags go past max_seq_len for RoPE: the accuracy check at 4x, a TensorRT profile to 16x
    (the TensorRT build itself is skipped without a GPU). With learned positions the same flags are refused
    (test_bad_deploy_flags_give_clear_errors)."""
    ckpt, report = position_checkpoint("rope", "softmax"), tmp_path / "report.json"
    long = [
        "--stages", "validate,tensorrt", "--validate_seq_len", str(4 * TRAIN_LEN), "--validate_batches", "1",
        "--greedy_steps", "32", "--seq_len", str(4 * TRAIN_LEN), "--max_cache", str(16 * TRAIN_LEN - 1),
        "--output", str(report),
    ]
    assert cli(["deploy", str(ckpt), *long]) == 0, capsys.readouterr()
    result = json.loads(report.read_text())["validation"]["onnxruntime"]
    assert result["passed"] and result["greedy_matching"] == result["greedy_steps"] == 32


def test_profile_shapes_past_max_seq_len_are_calls_the_rope_graph_accepts(position_checkpoint):
    backend = load_backend("onnxruntime", position_checkpoint("rope", "softmax"))
    dims = GraphDims.from_config(backend.config)
    profile = resolve_profile(ProfileConfig(max_query=4 * TRAIN_LEN, max_cache=16 * TRAIN_LEN - 1), batch_size=2,
                              seq_len=TRAIN_LEN, max_positions=dims.max_positions)
    shapes = profile_shapes(profile, dims)
    assert shapes["past_keys_0"][2][2] == 16 * TRAIN_LEN - 1
    for level in range(3):  # min, opt, max
        ids = shapes["input_ids"][level]
        outputs = dict(zip(OUTPUT_NAMES, backend.session.run(None, zero_feeds(shapes, level)), strict=True))
        assert {k: v.shape for k, v in outputs.items()} == output_shapes(dims, ids[0], ids[1])


def zero_feeds(shapes: dict[str, tuple[tuple[int, ...], ...]], level: int) -> dict[str, np.ndarray]:
    """Inputs of profile level ``level`` (0: min, 1: opt, 2: max) as zeros; every past position filled."""
    feeds = {name: np.zeros(shape[level], dtype=np.float32) for name, shape in shapes.items()}
    feeds["input_ids"] = feeds["input_ids"].astype(np.int64)
    feeds["cache_len"] = np.array(shapes["past_keys_0"][level][2], dtype=np.int64)
    return feeds


# --- the binding logic TensorRT uses, checked on the real graph ---------------------------------------


class ProfiledBackend:
    """A real backend that, like TensorRTBackend, refuses calls outside an engine profile, and records them."""

    def __init__(self, backend: OrtBackend, profile) -> None:
        self.backend, self.profile, self.calls = backend, profile, set()
        self.name, self.vocab_size, self.max_seq_len = "profiled", backend.vocab_size, backend.max_seq_len
        self.max_positions = backend.max_positions
        self.device = backend.device

    def new_state(self, batch_size: int, max_len: int):
        return self.backend.new_state(batch_size, max_len)

    def forward(self, tokens: torch.Tensor, state=None) -> torch.Tensor:
        call = (tokens.shape[0], tokens.shape[1], 0 if state is None else state.pos)
        self.profile.check_call(*call)
        self.calls.add(call)
        return self.backend.forward(tokens, state)


def test_the_engine_profile_covers_every_call_of_its_validation(checkpoints, exported, eval_batches):
    """deploy --batch_size 1 --seq_len 32: the profile still admits the validation (batch 4 x 64 tokens)."""
    calls = validation_calls(batch_size=4, seq_len=SEQ, max_positions=128, greedy_steps=64)
    profile = resolve_profile(ProfileConfig(), batch_size=1, seq_len=32, max_positions=128, cover=calls)
    candidate = ProfiledBackend(load_backend("onnxruntime", checkpoints["softmax"]), profile)
    report = validate(reference(checkpoints["softmax"]), candidate, eval_batches, greedy_steps=64)
    assert report.passed and report.greedy_steps == 64, report.summary()
    assert candidate.calls <= calls  # validation_calls knows every call validate makes...
    assert {c for c in calls - candidate.calls if c[1:] != (SEQ, 0)} == set()  # ...and they all happen
    with pytest.raises(UserError, match="batch 4 is outside the TensorRT engine's profile \\[1, 1\\]"):
        validate(reference(checkpoints["softmax"]), ProfiledBackend(candidate.backend, resolve_profile(
            ProfileConfig(), batch_size=1, seq_len=32, max_positions=128)), eval_batches)



def test_profile_shapes_are_calls_the_exported_graph_accepts(checkpoints, exported):
    """Every min/opt/max shape of a profile is a valid call; the outputs have the shapes we allocate."""
    backend = load_backend("onnxruntime", checkpoints["softmax"])
    dims = GraphDims.from_config(backend.config)
    profile = resolve_profile(ProfileConfig(opt_cache=16), batch_size=3, seq_len=32, max_positions=128)
    shapes = profile_shapes(profile, dims)
    graph_inputs = {i.name: i.shape for i in backend.session.get_inputs()}
    assert set(shapes) | {"cache_len"} == set(graph_inputs) and graph_inputs["cache_len"] == []
    for level in range(3):  # min, opt, max
        for name, shape in shapes.items():
            fixed = [(s, g) for s, g in zip(shape[level], graph_inputs[name], strict=True) if isinstance(g, int)]
            assert all(s == g for s, g in fixed), (name, shape, graph_inputs[name])
        outputs = dict(zip(OUTPUT_NAMES, backend.session.run(None, zero_feeds(shapes, level)), strict=True))
        ids = shapes["input_ids"][level]
        assert {k: v.shape for k, v in outputs.items()} == output_shapes(dims, ids[0], ids[1])


# --- benchmark ----------------------------------------------------------------------------------------


def test_benchmark_times_each_backend_and_reports_failures(checkpoints, exported, tmp_path):
    tokens = torch.randint(0, VOCAB, (2, 32))
    missing = tmp_path / "missing.onnx"
    quick = dict(warmup=1, iters=3, decode_steps=4)
    results = [
        benchmark_backend("pytorch", lambda: reference(checkpoints["softmax"]), tokens, **quick),
        benchmark_backend(
            "onnxruntime-cpu", lambda: load_backend("onnxruntime", checkpoints["softmax"]), tokens, **quick
        ),
        benchmark_backend("broken", lambda: OrtBackend(missing), tokens),
    ]
    for r in results[:2]:
        assert r.status == "ok" and r.prefill.n == 3 and r.decode.n == 4 and r.decode_context == 28
        assert (
            r.prefill.p50_ms <= r.prefill.p90_ms <= r.prefill.p99_ms
            and r.tokens_per_s == 32 * r.sequences_per_s
        )
    assert results[2].status.startswith("failed: UserError") and "missing.onnx" in results[2].status
    table = format_table(results)
    assert "onnxruntime-cpu" in table and "failed: UserError" in table


# --- the deploy command -------------------------------------------------------------------------------


def test_deploy_command_validates_against_the_eval_set_the_checkpoint_records(checkpoints, exported, capsys):
    assert cli(["deploy", str(checkpoints["softmax"]), "--stages", "validate", "--greedy_steps", "32"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime fp32 vs PyTorch" in out and "-> PASS" in out
    report = json.loads((checkpoints["softmax"] / "export" / "deploy_report.fp32.json").read_text())
    result = report["validation"]["onnxruntime"]
    assert result["passed"] and result["greedy_matching"] == 32 and result["loss_diff"] <= 1e-4
    assert report["failed"] == []


def test_deploy_command_exports_skips_tensorrt_clearly_and_benchmarks(checkpoints, tmp_path, capsys):
    report_file = tmp_path / "report.json"
    run_dir = checkpoints["softplus"].parent.parent
    sizes = ["--batch_size", "2", "--seq_len", "32", "--iters", "2", "--warmup", "1", "--decode_steps", "4",
             "--cache_lengths", "40,8"]
    backends = ["--bench_backends", "pytorch,onnxruntime-cpu,tensorrt"]
    stages = ["--stages", "export,tensorrt,benchmark"]
    code = cli(
        [
            "deploy",
            str(run_dir),
            *stages,
            *sizes,
            *backends,
            "--compile",
            "false",
            "--output",
            str(report_file),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "TensorRT step skipped" in out and "NGC PyTorch container" in out
    report = json.loads(report_file.read_text())
    assert report["step"] == 40 and report["export"]["opset"] == 18
    assert report["tensorrt"]["status"].startswith("skipped:")
    rows = {r["backend"]: r for r in report["benchmark"]["results"]}
    assert rows["pytorch"]["status"] == rows["onnxruntime-cpu"]["status"] == "ok"
    assert rows["onnxruntime-cpu"]["prefill"]["p50_ms"] > 0 and rows["onnxruntime-cpu"]["decode_speedup"] > 0
    assert rows["tensorrt"]["status"].startswith("skipped:")
    for name in ("pytorch", "onnxruntime-cpu"):  # decode also timed from caches of 8 and 40 (filled 32 + 8)
        by_cache = rows[name]["decode_by_cache"]
        assert sorted(by_cache) == ["40", "8"] and all(by_cache[n]["n"] == 4 for n in by_cache)
    table = out[out.index("decode ms/token p50 (p90)") :].splitlines()
    assert "cache 8" in table[0] and table[0].index("cache 8") < table[0].index("cache 40")
    assert [line.split()[0] for line in table[2:5]] == ["pytorch", "onnxruntime-cpu", "tensorrt"]
    assert table[4].split()[1:] == ["-", "-"]


def test_a_run_of_some_stages_keeps_the_earlier_results_of_the_others(checkpoints, tmp_path, capsys):
    report_file = tmp_path / "report.json"
    deploy = ["deploy", str(checkpoints["softmax"]), "--device", "cpu", "--output", str(report_file)]
    bench = ["--stages", "benchmark", "--bench_backends", "pytorch", "--compile", "false", "--batch_size", "2",
             "--seq_len", "16", "--iters", "2", "--warmup", "1", "--decode_steps", "2"]
    assert cli([*deploy, *bench]) == 0
    benchmark = json.loads(report_file.read_text())["benchmark"]
    assert cli([*deploy, "--stages", "tensorrt"]) == 0  # skipped without TensorRT: a status, not a measurement
    assert f"kept the results of benchmark from the earlier report in {report_file}" in capsys.readouterr().out
    report = json.loads(report_file.read_text())
    assert report["benchmark"] == benchmark and report["tensorrt"]["status"].startswith("skipped:")
    assert set(report["stages"]) == {"benchmark", "tensorrt"} and report["stages"]["benchmark"]["device"] == "cpu"
    assert cli([*deploy, *bench]) == 0  # the stage run again replaces its own results, and says so
    out = capsys.readouterr().out
    assert f"kept the results of tensorrt from the earlier report in {report_file}" in out
    assert f"replaced the earlier results of benchmark in {report_file}" in out
    report = json.loads(report_file.read_text())
    assert report["benchmark"] != benchmark and report["tensorrt"]["status"].startswith("skipped:")


def test_each_command_verifies_its_checkpoint_once(checkpoints, exported, tmp_path, monkeypatch, capsys):
    """Verifying a checkpoint hashes all its files (1.5 GB for GPT-2 124M): a command resolves its checkpoint
    once and passes it on, whatever backends and stages it opens."""
    hashed: Counter[Path] = Counter()
    real_sha256 = checkpoint.verify.sha256_file

    def counting_sha256(path: Path, *args, **kwargs) -> str:
        hashed[Path(path)] += 1
        return real_sha256(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.verify, "sha256_file", counting_sha256)
    ckpt, out = str(checkpoints["softmax"]), str(tmp_path / "out.json")
    evaluate = ["evaluate", ckpt, "--max_batches", "1", "--batch_size", "2", "--device", "cpu", "--output", out]
    deploy = [
        "deploy", ckpt, "--stages", "export,validate,tensorrt,benchmark", "--validate_batches", "1",
        "--greedy_steps", "4", "--bench_backends", "pytorch,onnxruntime-cpu", "--compile", "false",
        "--batch_size", "2", "--seq_len", "16", "--iters", "1", "--warmup", "1", "--decode_steps", "2",
        "--output", out,
    ]
    commands = {
        "evaluate": evaluate,
        "evaluate --backend onnxruntime": [*evaluate, "--backend", "onnxruntime"],  # auto: finds the fp32 export
        "generate --backend onnxruntime": ["generate", ckpt, "--backend", "onnxruntime", "--device", "cpu",
                                           "--max_new_tokens", "2"],
        "deploy": deploy,
    }
    for name, argv in commands.items():
        hashed.clear()
        assert cli(argv) == 0, capsys.readouterr()
        assert hashed and set(hashed.values()) == {1}, f"{name}: {hashed}"


# --- bad input ----------------------------------------------------------------------------------------


def test_missing_or_non_checkpoints_give_clear_errors(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_backend("onnxruntime", tmp_path / "nope")
    assert cli(["deploy", str(tmp_path)]) == 2
    assert "is not a checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--seq_len", "129"], "outside \\[1, 128\\] \\(the model's max_seq_len\\)"),
        (["--validate_seq_len", "500"], "outside \\[1, 128\\]"),
        (["--min_batch", "8", "--opt_batch", "4", "--max_batch", "2"], "need min <= opt <= max"),
        (["--max_query", "200"], "exceeds the model's max_seq_len 128"),
        (["--stages", "export,compile"], "unknown stages"),
        (["--stages", "tensorrt", "--batch_size", "1", "--max_batch", "2"], "accuracy check .* batch 4 is outside"),
        (
            ["--stages", "tensorrt", "--validate_seq_len", "32", "--greedy_steps", "8", "--max_cache", "20"],
            "\\(1, 1, 22\\), but cache length 22 is outside",  # greedy: prompt 16 + 8 steps - 2
        ),
        (["--validate_batch_size", "0"], "--validate_batch_size must be >= 1"),
        (["--validate_batches", "0"], "--validate_batches must be >= 1"),
        (["--greedy_steps", "-1"], "--greedy_steps must be >= 0"),
        (["--iters", "0"], "--iters must be >= 1"),
        (["--decode_steps", "0"], "--decode_steps must be >= 1"),
        (["--warmup", "-1"], "--warmup must be >= 0"),
        (["--cache_lengths", "64,x"], "--cache_lengths takes comma-separated whole numbers"),
        (["--cache_lengths", "64,100"], "--cache_lengths 100 \\+ --decode_steps 32 exceeds the model's max_seq_len"),
    ],
)
def test_bad_deploy_flags_give_clear_errors(flags, message, checkpoints, capsys):
    assert cli(["deploy", str(checkpoints["softmax"]), "--seq_len", "64", *flags]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_onnx_file_of_another_model_version_is_refused(checkpoints, exported, tmp_path):
    with pytest.raises(StaleExportError, match="another model version.*weights_sha256"):
        load_backend("onnxruntime", checkpoints["softmax"], path=exported["softplus"])
    foreign = onnx.load(str(exported["softmax"]))
    del foreign.metadata_props[:]
    onnx.save(foreign, tmp_path / "foreign.onnx")
    with pytest.raises(StaleExportError, match="not exported by"):
        load_backend("onnxruntime", checkpoints["softmax"], path=tmp_path / "foreign.onnx")
    with pytest.raises(
        UserError, match="no onnxruntime export at .*model.bf16.onnx.*found: .*model.fp32.onnx"
    ):
        load_backend("onnxruntime", checkpoints["softmax"], precision="bf16")
