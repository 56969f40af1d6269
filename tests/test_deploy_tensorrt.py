"""The TensorRT stage without TensorRT: profiles, precision -> builder settings, binding helpers, and the
clear message when TensorRT or a GPU is missing.

TensorRT cannot be installed on the CI machines (no GPU, libraries too large), so the engine build and
run themselves are not exercised here; the shape logic they rely on is also checked against the real
exported graph in test_deploy_onnx.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from types import SimpleNamespace

import pytest
import torch

from gpt2.checkpoint import save_checkpoint
from gpt2.deployment.tensorrt import build_engine, precision_plan
from gpt2.deployment.validate import validation_calls
from gpt2.errors import UserError
from gpt2.inference.artifacts import engine_path
from gpt2.inference.exports import load_backend
from gpt2.inference.graph_io import GraphDims, GraphState, check_step, empty_state, output_shapes
from gpt2.inference.profiles import Profile, ProfileConfig, profile_shapes, resolve_profile
from gpt2.inference.tensorrt import (
    TensorRTUnavailable,
    cuda_device,
    engine_info_path,
    import_tensorrt,
    tensor_address,
    torch_dtype,
)
from gpt2.model import GPT, ModelConfig

TENSORRT_USABLE = torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None
needs_no_tensorrt = pytest.mark.skipif(
    TENSORRT_USABLE, reason="checks the message shown where TensorRT is missing"
)
DIMS = GraphDims(n_layers=4, n_heads=4, head_dim=32, vocab_size=50257, max_positions=2048)


# --- optimisation profile -----------------------------------------------------------------------------


def test_default_profile_covers_prefill_and_decode_of_the_benchmark():
    profile = resolve_profile(ProfileConfig(), batch_size=32, seq_len=2048, max_positions=2048)
    assert profile == Profile(batch=(1, 32, 32), query=(1, 2048, 2048), cache=(0, 0, 2047))
    profile.check_call(32, 2048, 0)  # prefill of the benchmark
    profile.check_call(32, 1, 2047)  # its last decode step
    with pytest.raises(UserError, match="batch 33 is outside the TensorRT engine's profile \\[1, 32\\]"):
        profile.check_call(33, 1, 0)
    with pytest.raises(UserError, match="cache length 2048 is outside"):
        profile.check_call(1, 1, 2048)


def test_default_profile_also_covers_the_validation_after_the_build():
    """deploy --batch_size 1 --seq_len 128: validation still runs batch 4 x 256 tokens and 64 greedy steps."""
    calls = validation_calls(batch_size=4, seq_len=256, max_positions=2048, greedy_steps=64)
    assert {(4, 128, 0), (4, 1, 128), (4, 127, 129), (4, 256, 0), (1, 256, 0), (1, 16, 0), (1, 1, 78)} <= calls
    assert max(c[2] for c in calls if c[0] == 1 and c[1] == 1) == 16 + 64 - 2  # the last step is not fed back
    profile = resolve_profile(ProfileConfig(), batch_size=1, seq_len=128, max_positions=2048, cover=calls)
    assert profile == Profile(batch=(1, 1, 4), query=(1, 128, 256), cache=(0, 0, 129))
    for call in calls:
        profile.check_call(*call)
    profile.check_call(1, 128, 0)  # the benchmark's prefill and last decode step as before
    profile.check_call(1, 1, 127)
    # Bounds the user set are kept; one that excludes a validation call is refused before the build.
    with pytest.raises(UserError, match="accuracy check .* \\(4, 256, 0\\).* batch 4 is outside .*\\[1, 2\\]"):
        resolve_profile(ProfileConfig(max_batch=2), 1, 128, 2048, cover=calls)
    short = validation_calls(batch_size=4, seq_len=16, max_positions=2048, greedy_steps=64)
    with pytest.raises(UserError, match="\\(1, 1, 78\\), but cache length 78 is outside .*\\[0, 40\\]"):
        resolve_profile(ProfileConfig(max_batch=4, max_cache=40), 1, 16, 2048, cover=short)


def test_models_that_read_past_max_seq_len_take_longer_profiles_from_flags():
    """Without learned positions the default profile stays at the training length, and flags may go past it."""
    relative = GraphDims.from_config(ModelConfig(vocab_size=100, n_layers=1, dim=32, n_heads=2, max_seq_len=2048,
                                                 position="rope"))
    assert relative.max_positions is None
    default = resolve_profile(ProfileConfig(), batch_size=32, seq_len=2048, max_positions=None)
    assert default == resolve_profile(ProfileConfig(), batch_size=32, seq_len=2048, max_positions=2048)
    long = ProfileConfig(max_query=8192, opt_cache=4096, max_cache=32767)  # 16 x 2048 in decode
    profile = resolve_profile(long, batch_size=1, seq_len=4096, max_positions=None)
    assert profile == Profile(batch=(1, 1, 1), query=(1, 4096, 8192), cache=(0, 4096, 32767))
    profile.check_call(1, 1, 32767)
    assert profile_shapes(profile, relative)["past_keys_0"][2] == (1, 2, 32767, 16)
    with pytest.raises(UserError, match="max_query 8192 exceeds the model's max_seq_len 2048"):
        resolve_profile(long, batch_size=1, seq_len=2048, max_positions=2048)
    # Validation generates its 64 greedy tokens whatever the length; learned positions stop at the table's end.
    calls = validation_calls(batch_size=1, seq_len=8, max_positions=None, greedy_steps=64)
    assert max(c[2] for c in calls if c[1] == 1) == 8 + 64 - 2
    assert max(c[2] for c in validation_calls(1, 8, 32, 64) if c[1] == 1) == 32 - 2


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            ProfileConfig(min_batch=8, opt_batch=4, max_batch=2),
            "batch: need min <= opt <= max, got min 8, opt 4",
        ),
        (ProfileConfig(opt_batch=64), "batch: need min <= opt <= max"),
        (ProfileConfig(min_query=0), "query: min 0 must be >= 1"),
        (ProfileConfig(min_cache=-1), "cache: min -1 must be >= 0"),
        (ProfileConfig(opt_query=300, max_query=200), "query: need min <= opt <= max"),
        (ProfileConfig(max_query=2049), "max_query 2049 exceeds the model's max_seq_len 2048"),
        (
            ProfileConfig(max_cache=2048),
            "max_cache 2048 \\+ min_query 1 exceeds the model's max_seq_len 2048",
        ),
        (ProfileConfig(opt_cache=1024), "opt_query 2048 \\+ opt_cache 1024 exceeds"),
        (ProfileConfig(opt_batch=8, max_batch=16), "batch_size 32 / seq_len 2048 do not fit the profile"),
    ],
)
def test_inconsistent_profiles_are_refused_with_the_offending_values(cfg, message):
    with pytest.raises(UserError, match=message):
        resolve_profile(cfg, batch_size=32, seq_len=2048, max_positions=2048)


def test_profile_shapes_are_the_graph_inputs_at_min_opt_max():
    profile = resolve_profile(ProfileConfig(opt_cache=512, opt_query=1024), 8, 1536, 2048)
    shapes = profile_shapes(profile, DIMS)
    assert shapes["input_ids"] == ((1, 1), (8, 1024), (8, 1536))
    assert shapes["past_keys_0"] == ((1, 4, 0, 32), (8, 4, 512, 32), (8, 4, 1535, 32))
    past = [f"past_{kind}_{layer}" for kind in ("keys", "values") for layer in range(4)]
    assert set(shapes) == {"input_ids", *past} and all(shapes[name] == shapes["past_keys_0"] for name in past)


# --- precision -> builder settings --------------------------------------------------------------------


def test_precision_plan_follows_the_graph_dtypes():
    fp32 = precision_plan("fp32", trt_major=10)
    assert fp32.dtype == torch.float32 and fp32.strongly_typed_flag and fp32.clear_flags == ("TF32",)
    assert precision_plan("fp32", 10, allow_tf32=True).clear_flags == ()
    fp16 = precision_plan("fp16", 10)
    assert fp16.dtype == torch.float16 and fp16.strongly_typed_flag and fp16.clear_flags == ()
    assert precision_plan("bf16", 10).dtype == torch.bfloat16
    # TensorRT 11: always strongly typed, no flag to ask for it.
    assert not precision_plan("fp16", 11).strongly_typed_flag
    with pytest.raises(UserError, match="unknown precision 'int8'"):
        precision_plan("int8", 10)
    with pytest.raises(TensorRTUnavailable, match="too old"):
        precision_plan("fp16", 8)


# --- binding helpers ----------------------------------------------------------------------------------


def test_tensor_dtypes_and_addresses_for_binding():
    assert torch_dtype(SimpleNamespace(name="HALF")) == torch.float16
    assert torch_dtype(SimpleNamespace(name="INT64")) == torch.int64
    with pytest.raises(TypeError, match="FP8"):
        torch_dtype(SimpleNamespace(name="FP8"))
    placeholder = torch.zeros(4)
    state = empty_state(DIMS, batch=2, max_len=16, dtype=torch.float16, device=torch.device("cpu"))
    assert state.keys.shape == (4, 2, 4, 0, 32) and state.pos == 0
    assert (
        tensor_address(state.keys, placeholder) == placeholder.data_ptr()
    )  # empty cache: still a valid address
    full = torch.zeros(3)
    assert tensor_address(full, placeholder) == full.data_ptr()


def test_the_cache_grows_in_steps_or_to_exactly_its_filled_length():
    def new(n: int, value: float) -> torch.Tensor:  # the graph's new_keys / new_values for n tokens
        return torch.full(DIMS.cache_shape(1, n), value)

    cpu = torch.device("cpu")
    stepped = empty_state(DIMS, batch=1, max_len=100, dtype=torch.float32, device=cpu, grow=64)
    stepped.append(new(10, 1.0), new(10, -1.0))
    assert stepped.pos == 10 and stepped.capacity == 64 and (stepped.keys[:, :, :, 10:] == 0).all()
    buffer = stepped.keys
    stepped.append(new(1, 2.0), new(1, -2.0))
    assert stepped.keys is buffer and stepped.pos == 11  # written in place
    stepped.append(new(60, 3.0), new(60, -3.0))
    assert stepped.pos == 71 and stepped.capacity == 100  # 128 positions would pass max_len
    exact = empty_state(DIMS, batch=1, max_len=100, dtype=torch.float32, device=cpu, grow=None)
    for n, value in ((10, 1.0), (1, 2.0), (60, 3.0)):
        exact.append(new(n, value), new(n, -value))
        assert exact.capacity == exact.pos
    assert exact.pos == 71
    whole = empty_state(DIMS, batch=1, max_len=64, dtype=torch.float32, device=cpu, grow=64)
    prefill = new(64, 5.0)
    whole.append(prefill, -prefill)
    assert whole.keys is prefill and whole.pos == whole.capacity == 64  # a prefill that fills it: kept, not copied
    for state in (stepped, exact):
        keys = state.keys[0, 0, 0, :, 0]
        assert keys[:10].eq(1).all() and keys[10] == 2 and keys[11:71].eq(3).all() and keys[71:].eq(0).all()
        torch.testing.assert_close(state.values, -state.keys)


def test_output_shapes_and_step_checks():
    assert output_shapes(DIMS, batch=2, query_len=5) == {
        "logits": (2, 5, 50257),
        "new_keys": (4, 2, 4, 5, 32),
        "new_values": (4, 2, 4, 5, 32),
    }
    state = GraphState(torch.zeros(4, 2, 4, 10, 32), torch.zeros(4, 2, 4, 10, 32), max_len=12, pos=10)
    check_step(DIMS, torch.zeros(2, 2, dtype=torch.long), state)
    with pytest.raises(ValueError, match="KV cache full: 13 positions needed, 12 allocated"):
        check_step(DIMS, torch.zeros(2, 3, dtype=torch.long), state)
    with pytest.raises(ValueError, match="3 sequences given, the cache holds 2"):
        check_step(DIMS, torch.zeros(3, 1, dtype=torch.long), state)
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len"):
        empty_state(DIMS, 1, 4096, torch.float32, torch.device("cpu"))
    unlimited = dataclasses.replace(DIMS, max_positions=None)  # any position encoding but learned
    long = empty_state(unlimited, 1, 16 * 2048, torch.float32, torch.device("cpu"))
    check_step(unlimited, torch.zeros(1, 4096, dtype=torch.long), long)
    with pytest.raises(ValueError, match="sequence of 4096 tokens exceeds max_seq_len 2048 \\(learned positions\\)"):
        check_step(DIMS, torch.zeros(1, 4096, dtype=torch.long), long)


# --- TensorRT missing ---------------------------------------------------------------------------------


@needs_no_tensorrt
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_missing_tensorrt_or_gpu_says_what_is_needed(device):
    with pytest.raises(TensorRTUnavailable, match="NGC PyTorch container") as err:
        import_tensorrt(device)
    assert isinstance(err.value, UserError)  # the CLI prints it without a traceback


@needs_no_tensorrt
def test_tensorrt_backend_and_build_refuse_clearly_without_tensorrt(tmp_path):
    model = GPT(ModelConfig(vocab_size=100, n_layers=1, dim=32, n_heads=2, max_seq_len=16))
    (tmp_path / "tokenizer.json").write_text("{}")
    ckpt = save_checkpoint(tmp_path / "run", 1, model, None, tmp_path / "tokenizer.json")
    with pytest.raises(UserError, match="no tensorrt export at .*model.fp16.engine"):
        load_backend("tensorrt", ckpt, device="cuda", precision="fp16")
    engine = engine_path(SimpleNamespace(path=ckpt), "fp16")
    engine.parent.mkdir()
    engine.write_bytes(b"not an engine")
    engine_info_path(engine).write_text(json.dumps({"identity": {}}))
    with pytest.raises(TensorRTUnavailable, match="NGC"):
        load_backend("tensorrt", ckpt, device="cuda", precision="fp16")
    profile = resolve_profile(ProfileConfig(), 1, 16, 16)
    with pytest.raises(TensorRTUnavailable, match="NGC"):
        build_engine(tmp_path / "model.onnx", engine, profile, "fp16")
    with pytest.raises(TensorRTUnavailable, match="runs on CUDA devices, not cpu"):
        build_engine(tmp_path / "model.onnx", engine, profile, "fp16", device="cpu")


def test_engines_are_built_for_and_named_after_one_gpu():
    """build_engine and TensorRTBackend pin a device index, so `cuda` means the same GPU to both."""
    assert cuda_device("cuda:1") == torch.device("cuda", 1)
    assert cuda_device("cpu") == torch.device("cpu")
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    assert cuda_device("cuda") == torch.device("cuda", current)
