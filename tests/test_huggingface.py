"""export-hf, import-hf and lm-evaluation-harness: tiny models of every variant through real transformers, tokenizers
and lm_eval, offline, on the bundled excerpt's text and tokenizer."""

import os

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):  # nothing here reaches a hub
    os.environ.setdefault(_name, "1")

import json  # noqa: E402
import shutil  # noqa: E402
import textwrap  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from gpt2.attention.score_mod import alibi_slopes  # noqa: E402
from gpt2.attention.softplus import softplus_attention_reference  # noqa: E402
from gpt2.checkpoint import load_model, save_checkpoint  # noqa: E402
from gpt2.cli import main as cli  # noqa: E402
from gpt2.data.text_shards import iter_documents  # noqa: E402
from gpt2.generation.generate import generate  # noqa: E402
from gpt2.generation.sampling import SamplingConfig  # noqa: E402
from gpt2.inference import TorchBackend  # noqa: E402
from gpt2.model import GPT, ModelConfig  # noqa: E402
from gpt2.model.hf_remote import modeling_gpt2_softplus as remote  # noqa: E402
from gpt2.tokenizer import Tokenizer  # noqa: E402

pytestmark = pytest.mark.e2e  # exports loaded by transformers and lm_eval

# name -> model options; "gpt2" is the one transformers runs natively.
VARIANTS = {
    "gpt2": {},
    "softplus": dict(attention="softplus"),
    "softplus_rope": dict(attention="softplus", position="rope"),
    "softplus_alibi_length": dict(attention="softplus", position="alibi", n_heads=3, length_base=8.0),
    "softplus_none": dict(attention="softplus", position="none"),
    "softmax_rope_length": dict(position="rope", length_base=4.0),
    "softmax_alibi": dict(position="alibi", n_heads=3),
}
REMOTE = [name for name in VARIANTS if name != "gpt2"]
NATIVE_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
REMOTE_FILES = NATIVE_FILES | {"modeling_gpt2_softplus.py", "configuration_gpt2_softplus.py"}
PROMPT = "The history of the"


def tiny_model(vocab_size: int, seed: int, **options) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab_size, n_layers=2, dim=48, n_heads=4, max_seq_len=128) | options
    model = GPT(ModelConfig(**cfg)).eval()
    with torch.no_grad():  # GPT-2's init gives near-uniform logits; larger weights give ties no chance
        for p in model.parameters():
            p.mul_(2)
    return model


@pytest.fixture(scope="session")
def checkpoints(corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_checkpoints")
    return {
        name: save_checkpoint(root / name, 3, tiny_model(corpus.vocab_size, i, **options), None, corpus.tokenizer)
        for i, (name, options) in enumerate(VARIANTS.items())
    }


@pytest.fixture(scope="session")
def exports(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_exports")
    for name, ckpt in checkpoints.items():
        assert cli(["export-hf", str(ckpt), str(root / name)]) == 0
    return {name: root / name for name in checkpoints}


def our_greedy(ckpt, prompt_ids: list[int], n: int) -> list[int]:
    """What `python -m gpt2 generate --temperature 0` picks: the tokens before the first end of text."""
    model, ckpt = load_model(ckpt)
    eot_id = Tokenizer.load(ckpt.tokenizer_path).eot_id
    return generate(TorchBackend(model), prompt_ids, n, SamplingConfig(temperature=0), stop_token=eot_id)[0]


def without_eot(ids: list[int], eot_id: int) -> list[int]:
    return ids[: ids.index(eot_id)] if eot_id in ids else ids


def code_imports(folder) -> set[str]:
    """The top-level modules the Python files of an export import (relative imports as ".")."""
    lines = [line.split() for code in folder.glob("*.py") for line in code.read_text().splitlines()]
    return {words[1].split(".")[0] or "." for words in lines if words and words[0] in ("import", "from")}


@pytest.mark.parametrize("name", ["gpt2", "softplus_rope"])
def test_pipeline_decodes_greedily_as_generate_does(name, corpus, checkpoints, exports, tmp_path):
    folder, remote_code = exports[name], name != "gpt2"
    assert {p.name for p in folder.iterdir()} == (REMOTE_FILES if remote_code else NATIVE_FILES)
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == corpus.vocab_size and ("auto_map" in config) == remote_code
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["eos_token"] == tokenizer_config["bos_token"] == "<|endoftext|>"
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=remote_code)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote_code)
    # Code of the folder (a module transformers made of its files), not of this package.
    assert type(hf).__module__.startswith("transformers" if remote_code else "transformers.models.gpt2")
    assert type(hf).__name__ == config["architectures"][0] == ("GPT2SoftplusForCausalLM" if remote_code
                                                               else "GPT2LMHeadModel")
    pipe = transformers.pipeline("text-generation", model=hf, tokenizer=hf_tokenizer)
    generated = pipe(PROMPT, max_new_tokens=12, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    tokenizer = Tokenizer.load(corpus.tokenizer)
    prompt_ids = tokenizer.encode(PROMPT)
    assert hf_tokenizer(PROMPT)["input_ids"] == prompt_ids
    theirs = without_eot(list(generated)[len(prompt_ids) :], tokenizer.eot_id)
    assert theirs == our_greedy(checkpoints[name], prompt_ids, 12)
    # ... and `python -m gpt2 generate` prints their text.
    output = tmp_path / "samples.jsonl"
    assert cli(["generate", str(checkpoints[name]), "--prompt", PROMPT, "--temperature", "0",
                "--max_new_tokens", "12", "--device", "cpu", "--output", str(output)]) == 0
    assert json.loads(output.read_text())["text"] == hf_tokenizer.decode(theirs) == tokenizer.decode(theirs)


@pytest.mark.parametrize("name", REMOTE)
def test_other_variants_export_with_their_code_and_compute_our_logits(name, corpus, checkpoints, exports):
    folder = exports[name]
    assert {p.name for p in folder.iterdir()} == REMOTE_FILES
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_gpt2_softplus.GPT2SoftplusForCausalLM"
    # Self-contained: nothing of this package, so the folder loads where it is not installed.
    assert code_imports(folder) == {"__future__", "math", "dataclasses", "typing", "torch", "transformers", "."}
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    model, _ = load_model(checkpoints[name])
    tokens = corpus.eval_ids(80).view(2, 40)
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), rtol=0, atol=1e-5)
        # Left padding: the padded row's tokens see neither the pads nor positions shifted by them.
        mask = torch.ones_like(tokens)
        mask[1, :15] = 0
        padded = hf(tokens.masked_fill(mask == 0, 0), attention_mask=mask).logits
        torch.testing.assert_close(padded[1, 15:], model(tokens[1:, 15:])[0], rtol=0, atol=1e-5)
    # Greedy decoding through transformers' KV cache gives our tokens.
    prompt = tokens[0, :10].tolist()
    generated = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, 10:].tolist()
    eot_id = Tokenizer.load(corpus.tokenizer).eot_id
    assert without_eot(generated, eot_id) == our_greedy(checkpoints[name], prompt, 12)


def test_remote_softplus_attention_is_the_reference_where_rows_underflow():
    torch.manual_seed(0)
    H, T, D = 3, 24, 16
    q, k, v = torch.randn(3, 2, H, T, D).unbind(0)
    q, k = q * 4 - 8, k * 4 + 8  # every score far below -87, where unshifted fp32 weights underflow to 0
    config = remote.GPT2SoftplusConfig(attention="softplus", position="alibi", length_base=2.0, n_head=H)
    positions = torch.arange(T)[None]
    visible = (positions[0, None, :] <= positions[0, :, None])[None, None]
    ours = softplus_attention_reference(q, k, v, length_base=2.0, alibi_slopes=alibi_slopes(H))
    theirs = remote.attend(q, k, v, remote.Positions(positions, positions, visible, None), config, alibi_slopes(H))
    assert torch.isfinite(ours).all() and torch.equal(theirs, ours)


@pytest.mark.parametrize("name", ["gpt2", "softplus_rope"])
def test_export_import_export_is_bit_exact(name, corpus, checkpoints, exports, tmp_path):
    assert cli(["import-hf", str(exports[name]), str(tmp_path / "ckpt")]) == 0
    assert cli(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "again")]) == 0
    for file in exports[name].iterdir():
        assert (tmp_path / "again" / file.name).read_bytes() == file.read_bytes(), file.name
    assert {p.name for p in (tmp_path / "again").iterdir()} == {p.name for p in exports[name].iterdir()}
    imported, ckpt = load_model(tmp_path / "ckpt")
    original, _ = load_model(checkpoints[name])
    assert ckpt.model_config == original.cfg and ckpt.meta["imported_from"]["hf_model"] == str(exports[name])
    assert ckpt.tokenizer_path.read_bytes() == corpus.tokenizer.read_bytes()  # the same token files serve it
    for key, weight in original.state_dict().items():
        rows = corpus.vocab_size if key in ("tok_emb.weight", "lm_head.weight") else None
        assert torch.equal(imported.state_dict()[key][:rows], weight[:rows]), key


def test_an_imported_gpt2_evaluates_and_fine_tunes(corpus, checkpoints, exports, tmp_path):
    imported = tmp_path / "imported"
    assert cli(["import-hf", str(exports["gpt2"]), str(imported)]) == 0
    losses = []
    for ckpt in (checkpoints["gpt2"], imported):  # the same weights: the same loss
        report = tmp_path / f"{ckpt.name}.json"
        eval_tokens = str(corpus.tokens / "eval.bin")
        assert cli(["evaluate", str(ckpt), "--eval_tokens", eval_tokens, "--seq_len", "32", "--batch_size", "2",
                    "--max_batches", "2", "--device", "cpu", "--output", str(report)]) == 0
        losses.append(json.loads(report.read_text())["loss"])
    assert losses[0] == losses[1]
    # Fine-tuning starts from the imported weights: one step at a tiny learning rate stays next to them.
    run = tmp_path / "finetune"
    assert cli(["train", "--data_dir", str(corpus.tokens), "--tokenizer", str(imported / "tokenizer.json"),
                "--init_from", str(imported), "--out_dir", str(run), "--max_steps", "1", "--seq_len", "32",
                "--batch_size", "2", "--lr", "1e-6", "--min_lr", "1e-6", "--warmup_steps", "0", "--eval_batches", "1",
                "--device", "cpu", "--progress", "false", "--dropout", "0.1"]) == 0
    tuned, ckpt = load_model(run)
    start, _ = load_model(imported)
    assert ckpt.step == 1 and ckpt.model_config.dropout == 0.1 and ckpt.train_config["init_from"] == str(imported)
    pairs = zip(tuned.state_dict().values(), start.state_dict().values(), strict=True)
    drift = max(float((a - b).abs().max()) for a, b in pairs)
    assert 0 < drift < 1e-4


def test_init_from_takes_the_checkpoint_model_and_tokenizer(corpus, other_tokenizer, checkpoints, tmp_path, capsys):
    data = ["--data_dir", str(corpus.tokens), "--tokenizer", str(corpus.tokenizer), "--out_dir", str(tmp_path / "run")]
    assert cli(["train", *data, "--init_from", str(checkpoints["gpt2"]), "--n_layers", "4"]) == 2
    assert "--init_from starts from the model of its checkpoint: leave out --n_layers" in capsys.readouterr().err
    other = save_checkpoint(tmp_path / "other", 1, tiny_model(400, 0), None, other_tokenizer)
    assert cli(["train", *data, "--init_from", str(other), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"--init_from {other} was trained with tokenizer" in err and f"encode the data with {other}" in err
    assert not (tmp_path / "run").exists()


def test_export_refuses_a_folder_that_holds_something_else(checkpoints, exports, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):  # --overwrite replaces an earlier export only
        assert cli(["export-hf", str(checkpoints["gpt2"]), str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: export folder {out} is not empty (it holds notes.txt)") and "\n" not in err
        assert [p.name for p in out.iterdir()] == ["notes.txt"] and sorted(p.name for p in tmp_path.iterdir()) == [
            "mine"]
    empty = tmp_path / "empty"  # an empty folder is as good as none
    empty.mkdir()
    assert cli(["export-hf", str(checkpoints["gpt2"]), str(empty)]) == 0
    assert {p.name for p in empty.iterdir()} == NATIVE_FILES
    # An earlier export is refused too, then replaced whole with --overwrite.
    earlier = tmp_path / "earlier"
    assert cli(["export-hf", str(checkpoints["softplus"]), str(earlier)]) == 0
    assert cli(["export-hf", str(checkpoints["gpt2"]), str(earlier)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli(["export-hf", str(checkpoints["gpt2"]), str(earlier), "--overwrite"]) == 0
    assert {p.name for p in earlier.iterdir()} == NATIVE_FILES
    assert (earlier / "model.safetensors").read_bytes() == (exports["gpt2"] / "model.safetensors").read_bytes()


def test_import_refuses_other_architectures_and_occupied_folders(exports, tmp_path, capsys):
    llama = tmp_path / "llama"
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2)
    transformers.LlamaForCausalLM(config).save_pretrained(llama)
    capsys.readouterr()
    out = tmp_path / "out"
    assert cli(["import-hf", str(llama), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {llama} is a LlamaForCausalLM model (model_type 'llama'); import-hf reads GPT-2 models "
                   "(GPT2LMHeadModel) and folders that export-hf wrote")
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert cli(["import-hf", str(exports["gpt2"]), str(out)]) == 2
    assert "is not empty (it holds notes.txt)" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert cli(["import-hf", str(tmp_path / "nowhere" / "x"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "x").exists()
    # A config that does not describe its weights (transformers would fill the third layer with random weights).
    deeper = shutil.copytree(exports["gpt2"], tmp_path / "deeper")
    config = json.loads((deeper / "config.json").read_text())
    (deeper / "config.json").write_text(json.dumps(config | {"n_layer": 3}))
    assert cli(["import-hf", str(deeper), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the weights of {deeper} do not fit its config.json: transformer.h.2.")
    assert "\n" not in err and not (tmp_path / "x").exists()


@pytest.fixture(scope="session")
def tiny_task(corpus, tmp_path_factory):
    """An lm-eval multiple-choice task read from a local JSON file: the first words of a sentence of the excerpt's
    eval text, and its next words among those of two other sentences."""
    root = tmp_path_factory.mktemp("lm_eval_task")
    sentences = [words for doc in iter_documents(corpus.text_dir / "eval") for sentence in doc.split(". ")
                 if len(words := sentence.split()) >= 12]
    docs = []
    for i in range(6):
        own, *others = sentences[3 * i : 3 * i + 3]
        choices = [" ".join(words[6:9]) for words in others]
        choices.insert(i % 3, " ".join(own[6:9]))
        docs.append({"question": " ".join(own[:6]), "choices": choices, "label": i % 3})
    (root / "docs.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    (root / "tiny_wiki_mc.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_wiki_mc
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {root / "docs.jsonl"}
          cache_dir: {root / "datasets"}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{question}}}}"
        doc_to_target: label
        doc_to_choice: choices
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
          - metric: acc_norm
            aggregation: mean
            higher_is_better: true
    """))
    return root


def loglikelihood(model: GPT, tokenizer: Tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) as lm-eval defines it: the continuation's tokens are those that encoding
    context + continuation adds to the context's."""
    context_ids = tokenizer.encode(context)
    continuation_ids = tokenizer.encode(context + continuation)[len(context_ids) :]
    tokens = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(tokens[:, :-1])[0, len(context_ids) - 1 :], dim=-1)
    return float(logprobs.gather(-1, torch.tensor(continuation_ids)[:, None]).sum())


@pytest.mark.parametrize("name", ["gpt2", "softplus_alibi_length"])
def test_lm_eval_scores_an_export_as_we_do(name, tiny_task, corpus, checkpoints, exports):
    import lm_eval
    from lm_eval.tasks import TaskManager

    trust = "" if name == "gpt2" else ",trust_remote_code=True"
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={exports[name]}{trust}", tasks=["tiny_wiki_mc"], device="cpu",
        batch_size=4, log_samples=True, task_manager=TaskManager(include_path=str(tiny_task), include_defaults=False),
    )
    samples = sorted(results["samples"]["tiny_wiki_mc"], key=lambda sample: sample["doc_id"])
    docs = [json.loads(line) for line in (tiny_task / "docs.jsonl").read_text().splitlines()]
    assert len(samples) == len(docs) == 6
    model, _ = load_model(checkpoints[name])
    tokenizer = Tokenizer.load(corpus.tokenizer)
    correct, correct_norm = [], []
    for doc, sample in zip(docs, samples, strict=True):
        ours = [loglikelihood(model, tokenizer, doc["question"], " " + choice) for choice in doc["choices"]]
        assert [resp[0][0] for resp in sample["resps"]] == pytest.approx(ours, abs=1e-4)
        lengths = [len(choice) for choice in doc["choices"]]  # acc_norm: per character of the choice
        correct.append(max(range(3), key=lambda i: ours[i]) == doc["label"])
        correct_norm.append(max(range(3), key=lambda i: ours[i] / lengths[i]) == doc["label"])
    metrics = results["results"]["tiny_wiki_mc"]
    assert 0 <= metrics["acc,none"] <= 1 and metrics["acc,none"] == pytest.approx(sum(correct) / 6)
    assert metrics["acc_norm,none"] == pytest.approx(sum(correct_norm) / 6)
