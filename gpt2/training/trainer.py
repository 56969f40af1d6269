"""The trainer: one loop for CPU, one GPU and (under torchrun) FSDP.

Everything that differs between those settings (device, precision, sharding,
compilation) is decided once in ``__init__``; ``fit`` and ``train_step`` are the
same loop everywhere. A step is a pure function of (checkpoint, step number):
the data order comes from the step, and the optimizer, scaler and RNG states
travel in the checkpoint, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import resource
import shutil
import sys
import time
from collections.abc import Collection, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from tqdm import tqdm

from gpt2.checkpoint import (
    Checkpoint,
    find_checkpoint,
    list_checkpoints,
    load_model_state,
    load_training_state,
    save_checkpoint,
)
from gpt2.data.loader import IGNORE_INDEX, TrainBatches, count_eval_batches, eval_batches
from gpt2.data.tokens import TokenFile, check_tokenizer_matches
from gpt2.errors import UserError
from gpt2.evaluation import EvalResult, evaluate_loss
from gpt2.evaluation.metrics import coverage
from gpt2.inference import resolve_device
from gpt2.io import atomic_write
from gpt2.model import GPT, ModelConfig, model_config_from_preset
from gpt2.tokenizer import Tokenizer
from gpt2.training.config import DEFAULT_PRESET, OptimConfig, TrainConfig
from gpt2.training.memory_check import check_training_memory
from gpt2.training.mfu import compute_kind, peak_flops
from gpt2.training.optim import build_optimizer, lr_at
from gpt2.training.parallel import all_reduce_mean, apply_fsdp, barrier, init_distributed
from gpt2.training.precision import resolve_precision
from gpt2.training.reporters import Reporter, check_packages, open_reporters
from gpt2.training.resume import resumed_configs
from gpt2.training.rng import capture_rng, restore_rng
from gpt2.training.run_lock import lock_run_dir
from gpt2.training.run_log import MetricsLog
from gpt2.training.signals import StopRequest


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        optim_cfg: OptimConfig,
        model_cfg: ModelConfig | None = None,
        tokenizer: Tokenizer | None = None,
        given: Collection[str] | None = None,
    ) -> None:
        """``model_cfg`` describes a new model (None: ``cfg.preset``'s); when resuming, the checkpoint's config
        is used (and must equal ``model_cfg`` if given). ``tokenizer`` is the one at ``cfg.tokenizer`` if the
        caller has loaded it already. ``given`` names the fields of ``cfg`` and ``optim_cfg`` set on the command
        line: when resuming, the others are the checkpoint's (None: all were set, the configs apply as they are).

        The run folder is locked from here to the end of :meth:`fit` (or :meth:`close`)."""
        self.cfg, self.optim_cfg = cfg, optim_cfg
        self.env, self.device = init_distributed(resolve_device(cfg.device))
        self.run_dir = Path(cfg.out_dir)
        self.run_lock = lock_run_dir(self.run_dir, self.env)  # before anything reads or writes the folder
        try:
            self._setup(model_cfg, tokenizer, given)
        except BaseException:
            if self.run_lock is not None:
                self.run_lock.abandon()
            raise

    def _setup(self, model_cfg: ModelConfig | None, tokenizer: Tokenizer | None, given: Collection[str] | None) -> None:
        """The run's settings, data, model and state: everything ``__init__`` does once the folder is locked."""
        resume_from = self._checkpoint_to_resume()
        if resume_from is not None:
            self._resume_settings(resume_from, given)
        cfg = self.cfg
        check_packages(cfg.report_to)  # on every rank: all stop alike
        self.precision = resolve_precision(cfg.amp_fp16, cfg.amp_bf16, cfg.bf16, cfg.allow_tf32, self.device)
        if self.env.distributed and self.precision.loss_scaling:
            raise UserError("--amp_fp16 is not supported with FSDP; use --amp_bf16 or --bf16")
        self._load_data(tokenizer or Tokenizer.load(cfg.tokenizer))

        # A resumed run has its weights in its own checkpoint; --init_from starts a new run only.
        self.init_from = find_checkpoint(cfg.init_from) if cfg.init_from and resume_from is None else None
        if self.init_from is not None:
            model_cfg = model_cfg or self.init_from.model_config
            self._check_init_compatible(self.init_from, model_cfg)
        if cfg.preset is None:  # recorded as what the model is: the checkpoint's preset, or the default
            if self.init_from is not None:  # its model, whatever it was (an imported one has no preset)
                preset = self.init_from.train_config.get("preset")
            else:
                saved = resume_from.train_config.get("preset") if resume_from is not None else None
                preset = saved or DEFAULT_PRESET
            self.cfg = cfg = dataclasses.replace(cfg, preset=preset)
        barrier()  # every rank has looked at the run folder before rank 0 writes to it
        model_cfg = self._model_config(resume_from, model_cfg)
        self.memory_estimate = check_training_memory(
            model_cfg, cfg, self.precision.name, self.device, self.env.world_size, announce=self.env.is_main
        )
        self._build_model(model_cfg)
        self.batches = TrainBatches(
            self.train_tokens, cfg.seq_len, cfg.batch_size, cfg.seed,
            rank=self.env.rank, world_size=self.env.world_size, accum_steps=cfg.accum_steps,
        )  # fmt: skip

        self.step = 0
        self.bad_steps = 0  # consecutive steps with a non-finite loss or gradient
        self.resumed_from = resume_from
        if resume_from is not None:
            self._restore(resume_from)
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_run_config()
        reporters = self._open_reporters() if self.env.is_main else []
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.env.is_main, reporters=reporters)
        if resume_from is not None:
            self.metrics.write("resume", self.step, checkpoint=str(resume_from.path))

    def close(self) -> None:
        """Release the run folder (:meth:`fit` does when it ends) for another trainer."""
        if self.run_lock is not None:
            self.run_lock.release()

    # ----------------------------------------------------------------- setup
    def _resume_settings(self, ckpt: Checkpoint, given: Collection[str] | None) -> None:
        """The checkpoint's training and optimizer settings, but for those ``given``; a change, one line each."""
        self.cfg, self.optim_cfg, changes = resumed_configs(self.cfg, self.optim_cfg, ckpt, given)
        if self.env.is_main:
            for line in changes:
                print(line)

    def _load_data(self, tokenizer: Tokenizer) -> None:
        """The tokenizer and the train/eval token files, which must have been encoded with it."""
        self.tokenizer = tokenizer
        data_dir = Path(self.cfg.data_dir)
        self.train_tokens = TokenFile(data_dir / "train.bin")
        self.eval_tokens = TokenFile(data_dir / "eval.bin")
        for token_file in (self.train_tokens, self.eval_tokens):
            check_tokenizer_matches(token_file, tokenizer)
        # An eval set too short for one target is an error now, not at the first evaluation (steps later).
        count_eval_batches(self.eval_tokens, self.cfg.seq_len, self.cfg.batch_size)
        self.data_identity = {"train": data_identity(self.train_tokens), "eval": data_identity(self.eval_tokens)}
        self.token_bytes = tokenizer.token_byte_lengths()  # for bits per byte

    def _model_config(self, resume_from: Checkpoint | None, requested: ModelConfig | None) -> ModelConfig:
        """The checkpoint's config when resuming (``requested``, if given, must equal it), else ``requested``
        (None: the --preset's)."""
        if resume_from is not None:
            model_cfg = self._check_resume_compatible(resume_from, requested)
        elif requested is None:  # a new run (or --resume of one without a checkpoint) named no model flags
            model_cfg = model_config_from_preset(
                self.cfg.preset or DEFAULT_PRESET, vocab_size=self.tokenizer.vocab_size
            )
        else:
            model_cfg = requested
        if model_cfg.vocab_size != self.tokenizer.vocab_size:
            raise UserError(
                f"model vocab_size {model_cfg.vocab_size} != tokenizer vocab_size {self.tokenizer.vocab_size}"
            )
        if self.cfg.seq_len > model_cfg.max_seq_len:
            raise UserError(f"--seq_len {self.cfg.seq_len} exceeds the model's max_seq_len {model_cfg.max_seq_len}")
        return model_cfg

    def _build_model(self, model_cfg: ModelConfig) -> None:
        """The model (sharded under FSDP, compiled with --compile), its optimizer and loss scaler."""
        # Initialise on the CPU from the seed: every rank (and a single-process run) starts identical.
        torch.manual_seed(self.cfg.seed)
        model = GPT(model_cfg)
        if self.init_from is not None:
            model.load_state_dict(load_model_state(self.init_from))
            if self.env.is_main:
                print(f"initialised from {self.init_from.path} (step {self.init_from.step})")
        model = model.to(self.device, dtype=self.precision.param_dtype)
        # Under FSDP, bf16 compute is FSDP's mixed-precision policy (bf16 params, fp32 reduction), not autocast.
        fsdp_bf16 = self.env.distributed and self.precision.compute_dtype == torch.bfloat16
        if self.env.distributed:
            apply_fsdp(model, param_dtype=torch.bfloat16 if fsdp_bf16 else None)
        self.model = model
        self.forward = torch.compile(model) if self.cfg.compile else model  # state dicts come from the raw module
        self.autocast_dtype = self.precision.compute_dtype if self.precision.autocast and not fsdp_bf16 else None
        self.optimizer = build_optimizer(model, self.optim_cfg, self.device.type)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.loss_scaling)
        self.flops_per_token = model.flops_per_token(self.cfg.seq_len)
        self.peak_flops = peak_flops(self.device, compute_kind(self.precision.compute_dtype, self.cfg.allow_tf32))

    def _checkpoint_to_resume(self) -> Checkpoint | None:
        if not self.cfg.resume:
            if list_checkpoints(self.run_dir) or (self.run_dir / "metrics.jsonl").exists():
                raise UserError(
                    f"{self.run_dir} already holds an earlier run; pass --resume (with the launchers: "
                    "RESUME=true) to continue it (from its newest checkpoint, or from the start if it stopped "
                    "before its first), or choose another --out_dir"
                )
            return None
        if not list_checkpoints(self.run_dir):
            # A run stopped before its first checkpoint (or a job that always passes --resume) starts anew.
            if self.env.is_main:
                print(f"--resume: {self.run_dir} has no checkpoint yet; starting from step 0")
            return None
        return find_checkpoint(self.run_dir, resume=True)

    def _check_init_compatible(self, ckpt: Checkpoint, model_cfg: ModelConfig) -> None:
        """A one-line error unless the ``--init_from`` checkpoint has this run's tokenizer and model (dropout
        aside)."""
        if ckpt.tokenizer_sha256 != self.tokenizer.sha256:
            raise UserError(
                f"--init_from {ckpt.path} was trained with tokenizer {ckpt.tokenizer_sha256[:12]}, but --tokenizer "
                f"{self.cfg.tokenizer} is {self.tokenizer.sha256[:12]}: encode the data with {ckpt.tokenizer_path}"
            )
        if dataclasses.replace(model_cfg, dropout=ckpt.model_config.dropout) != ckpt.model_config:
            raise UserError(
                f"--init_from {ckpt.path}: the model config differs from the checkpoint's (only --dropout may)\n"
                f"  checkpoint: {ckpt.model_config}\n  requested:  {model_cfg}"
            )

    def _check_resume_compatible(self, ckpt: Checkpoint, requested: ModelConfig | None) -> ModelConfig:
        if ckpt.tokenizer_sha256 != self.tokenizer.sha256:
            raise UserError(
                f"cannot resume {ckpt.path}: it was trained with tokenizer {ckpt.tokenizer_sha256[:12]}, "
                f"but --tokenizer {self.cfg.tokenizer} is {self.tokenizer.sha256[:12]}"
            )
        saved = ckpt.train_config
        if requested is not None and requested != ckpt.model_config:
            preset = f" (trained with --preset {saved['preset']})" if saved.get("preset") else ""
            raise UserError(
                f"cannot resume {ckpt.path}: the model config differs from the checkpoint's{preset}; --preset and "
                "the model flags must describe its model (leave them out to continue with it)\n"
                f"  checkpoint: {ckpt.model_config}\n  requested:  {requested}"
            )
        if self.env.is_main:
            for problem in self._data_changes(ckpt):
                print(f"warning: resuming on other data than the checkpoint was trained with: {problem}")
        return ckpt.model_config

    def _data_changes(self, ckpt: Checkpoint) -> list[str]:
        """How the token files of this run differ from those the checkpoint records (none: the same data)."""
        recorded = ckpt.meta.get("data", {})
        problems = []
        for split, token_file in (("train", self.train_tokens), ("eval", self.eval_tokens)):
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

    def _restore(self, ckpt: Checkpoint) -> None:
        state = load_training_state(ckpt, self.model, self.optimizer, self.env, trust=self.cfg.trust_checkpoint)
        self.step = state["step"]
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        if self.env.is_main:
            print(f"resumed from {ckpt.path} at step {self.step}")

    def _open_reporters(self) -> list[Reporter]:
        config = {"train_config": self.cfg.to_dict(), "optim_config": asdict(self.optim_cfg),
                  "model_config": self.model.cfg.to_dict()}  # fmt: skip
        return open_reporters(self.cfg.report_to, self.run_dir, self.step if self.cfg.resume else None, config)

    def _write_run_config(self) -> None:
        record = {
            "argv": sys.argv,
            "train_config": self.cfg.to_dict(),
            "optim_config": asdict(self.optim_cfg),
            "model_config": self.model.cfg.to_dict(),
            "world_size": self.env.world_size,
            "precision": self.precision.name,
            "memory_estimate": self.memory_estimate,
            "torch": torch.__version__,
        }
        with atomic_write(self.run_dir / f"run_config_step{self.step}.json") as f:
            json.dump(record, f, indent=2)

    # ------------------------------------------------------------------ loop
    def fit(self) -> EvalResult | None:
        """Train until ``max_steps`` or a stop signal; returns the last evaluation."""
        try:
            return self._fit()
        except torch.OutOfMemoryError:
            raise UserError(
                f"out of GPU memory with --batch_size {self.cfg.batch_size} x --seq_len {self.cfg.seq_len}: lower "
                "--batch_size and raise --accum_steps to keep the global batch of "
                f"{self.batches.global_batch} sequences, or use --amp_bf16 / --bf16"
            ) from None
        finally:
            self.metrics.close()
            self.close()

    def _fit(self) -> EvalResult | None:
        cfg = self.cfg
        if self.env.is_main:
            self._print_header()
        last_eval: EvalResult | None = None
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (cfg.progress and self.env.is_main))
        window = _Window()
        # The handlers stay on to the end: a signal during the final save or evaluation must not kill the run.
        with StopRequest() as stop:
            while self.step < cfg.max_steps:
                stats = self.train_step()
                self.step += 1
                window.add(stats)
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    record = self._log(window)
                    window = _Window()
                    bar.set_postfix(
                        loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}"
                    )
                bar.update(1)
                if self.bad_steps >= cfg.max_bad_steps:
                    bar.close()
                    self._stop_on_bad_steps(stats)
                if self._stop_requested(stop):
                    bar.close()
                    path = self._save_if_sound()
                    if self.env.is_main:
                        print(f"stopped at step {self.step}; {self._saved(path)}\n"
                              "resume: the same command with --resume (launchers: RESUME=true)")  # fmt: skip
                    return last_eval
                final = self.step == cfg.max_steps
                with window.paused():  # tokens/s counts training time only
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and not final:
                        self._save_if_sound()
                    if cfg.eval_every and self.step % cfg.eval_every == 0 and not final:
                        last_eval = self.evaluate()
                        if self.env.is_main:
                            bar.write(f"step {self.step}: eval loss {last_eval.loss:.4f}, bits per byte "
                                      f"{last_eval.bits_per_byte:.4f} over {self._coverage(last_eval)}")  # fmt: skip
            bar.close()
            # Save before the final evaluation, which can take minutes: a stop during it then loses nothing.
            path = self._save_if_sound()
            if self._nothing_trained() and self.env.is_main:
                print(f"nothing to train: the run is at step {self.step} (--max_steps {cfg.max_steps})")
            last_eval = self.evaluate()
        if self.env.is_main:
            print(
                f"step {self.step}: eval loss {last_eval.loss:.4f}, perplexity {last_eval.perplexity:.2f}, "
                f"bits per byte {last_eval.bits_per_byte:.4f} over {self._coverage(last_eval)}\n{self._saved(path)}"
            )
        return last_eval

    def train_step(self) -> dict[str, float]:
        """One optimizer step over ``accum_steps`` micro-batches (per rank)."""
        cfg = self.cfg
        self.model.train()
        lr = lr_at(self.step, self.optim_cfg, cfg.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for micro_step in range(cfg.accum_steps):
            if self.env.distributed:  # reduce-scatter gradients once, after the last micro-batch
                self.model.set_requires_gradient_sync(micro_step == cfg.accum_steps - 1)
            inputs, targets = self.batches.get(self.step, micro_step, device=self.device)
            with self._compute_context():
                logits = self.forward(inputs)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
            self.scaler.scale(loss / cfg.accum_steps).backward()
            loss_sum += loss.detach()
        self.scaler.unscale_(self.optimizer)
        max_norm = self.optim_cfg.grad_clip if self.optim_cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        mean_loss = all_reduce_mean(loss_sum / cfg.accum_steps)
        loss_value, norm_value = torch.stack([mean_loss, grad_norm.float()]).tolist()  # one device sync
        finite = math.isfinite(loss_value) and math.isfinite(norm_value)
        if self.scaler.is_enabled():
            # Overflowing fp16 gradients are the scaler's business: it skips the step and lowers the scale.
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale
            self.bad_steps = 0 if math.isfinite(loss_value) else self.bad_steps + 1
        else:
            skipped = not finite
            if finite:
                self.optimizer.step()
            self.bad_steps = 0 if finite else self.bad_steps + 1
        self.optimizer.zero_grad(set_to_none=True)
        if skipped and self.env.is_main:
            tqdm.write(f"step {self.step + 1}: skipped the update (loss {loss_value}, grad norm {norm_value})")
        return {"loss": loss_value, "grad_norm": norm_value, "lr": lr, "skipped": float(skipped)}

    def _compute_context(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _stop_requested(self, stop: StopRequest) -> bool:
        """Whether any rank got SIGINT/SIGTERM: all ranks must stop (and save) at the same step."""
        flag = torch.tensor(float(stop.requested), device=self.device)
        return bool(all_reduce_mean(flag).item() > 0) if self.env.distributed else stop.requested

    def _stop_on_bad_steps(self, stats: dict[str, float]) -> None:
        raise UserError(
            f"{self.bad_steps} consecutive steps had a non-finite loss or gradient (last: loss {stats['loss']}, "
            f"grad norm {stats['grad_norm']}) at step {self.step}. Nothing was saved: the weights may already be "
            f"damaged (an update with a finite loss can blow them up). Newest checkpoint: "
            f"{self._newest_checkpoint()}. Lower --lr, raise --warmup_steps, keep --grad_clip on, or use "
            "--amp_bf16/--bf16 instead of fp16, then continue from it with --resume."
        )

    def _newest_checkpoint(self) -> str:
        checkpoints = list_checkpoints(self.run_dir)
        return str(checkpoints[-1]) if checkpoints else "none yet"

    def _saved(self, path: Path | None) -> str:
        """The checkpoint a stop leaves: the one just saved (or loaded, if nothing was trained since), or else
        the newest there is."""
        if path is None:
            return f"newest checkpoint: {self._newest_checkpoint()}"
        return f"checkpoint {path} (kept as it was)" if self._nothing_trained() else f"saved {path}"

    def _nothing_trained(self) -> bool:
        """Whether the state is the one the run resumed from: no step since (a resume at --max_steps)."""
        return self.resumed_from is not None and self.resumed_from.step == self.step

    def _save_if_sound(self) -> Path | None:
        """Save a checkpoint, unless the latest step had a non-finite loss: those weights may be damaged,
        and saving them would count (and prune) as one of the newest checkpoints."""
        if self.bad_steps:
            if self.env.is_main:
                tqdm.write(f"step {self.step}: not saving a checkpoint after {self.bad_steps} non-finite step(s)")
            return None
        if self._nothing_trained():
            # Saving again would only rewrite that checkpoint, and its meta.json, for nothing.
            return self.resumed_from.path  # type: ignore[union-attr]
        return self.save()

    def _log(self, window: _Window) -> dict[str, float]:
        tokens_per_s = window.steps * self.batches.global_batch * self.cfg.seq_len / window.seconds()
        counted = window.steps - window.skipped
        record = {
            "loss": window.loss_sum / counted if counted else math.nan,  # written as null
            "lr": window.last["lr"],
            "grad_norm": window.last["grad_norm"],
            "tokens_per_s": tokens_per_s,
            "skipped_steps": window.skipped,
            "peak_memory_gb": _peak_memory_gb(self.device),
        }
        if self.peak_flops:
            record["mfu"] = tokens_per_s * self.flops_per_token / (self.peak_flops * self.env.world_size)
        self.metrics.write("train", self.step, **record)
        return record

    # ------------------------------------------------------- eval and saving
    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        cfg = self.cfg
        self.model.eval()
        max_batches = cfg.eval_batches or None
        total = count_eval_batches(self.eval_tokens, cfg.seq_len, cfg.batch_size, max_batches)
        batches = eval_batches(self.eval_tokens, cfg.seq_len, cfg.batch_size, max_batches)
        if self.env.distributed:
            batches = _rank_share(batches, total, self.env.rank, self.env.world_size)
            total = math.ceil(total / self.env.world_size)

        def logits_fn(tokens: torch.Tensor) -> torch.Tensor:
            with self._compute_context():
                return self.forward(tokens)

        result = evaluate_loss(
            logits_fn, batches, self.token_bytes, device=self.device, total=total, all_reduce=self.env.distributed
        )
        self.metrics.write("eval", self.step, **result.to_dict())
        return result

    def _coverage(self, result: EvalResult) -> str:
        """What an evaluation scored: with --eval_batches, a prefix of the eval set, so its loss is not the
        whole-set number ``evaluate`` reports."""
        scored = coverage(result.tokens, result.batches, len(self.eval_tokens), self.cfg.seq_len)
        if scored.startswith("the whole"):
            return scored
        return f"{scored} (--eval_batches; `python -m gpt2 evaluate` scores the whole set)"

    def save(self) -> Path:
        trainer_state: dict[str, Any] = {
            "step": self.step,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": capture_rng(),  # tensors and plain values: trainer.pt loads with weights_only
        }
        meta = {
            "train_config": self.cfg.to_dict(),
            "optim_config": asdict(self.optim_cfg),
            "precision": self.precision.name,
            "tokens_seen": self.step * self.batches.global_batch * self.cfg.seq_len,
            "data": {
                "train": str(self.train_tokens.path.resolve()),
                "eval": str(self.eval_tokens.path.resolve()),
                "train_identity": self.data_identity["train"],
                "eval_identity": self.data_identity["eval"],
            },
            "tokenizer_source": str(self.cfg.tokenizer),
        }
        try:
            return save_checkpoint(
                self.run_dir, self.step, self.model, self.optimizer, self.tokenizer.data, meta,
                trainer_state, self.cfg.keep_checkpoints, self.env,
            )  # fmt: skip
        except (OSError, RuntimeError, SafetensorError) as e:  # a full disk: torch.save raises RuntimeError
            free = shutil.disk_usage(self.run_dir).free / 2**30 if self.run_dir.exists() else math.nan
            raise UserError(
                f"could not write the checkpoint of step {self.step} to {self.run_dir} ({type(e).__name__}: {e}; "
                f"{free:.2f} GiB free there); the earlier checkpoints are intact. If the disk is full, free space "
                "and continue with --resume."
            ) from e

    def _print_header(self) -> None:
        cfg, model, global_batch = self.cfg, self.model, self.batches.global_batch
        print(
            f"model: {model.num_params() / 1e6:.2f}M non-embedding parameters, {model.cfg}\n"
            f"device: {self.device}, world size {self.env.world_size}, precision {self.precision.name}"
            f"{', compiled' if cfg.compile else ''}\n"
            f"data: {len(self.train_tokens):,} train tokens, {len(self.eval_tokens):,} eval tokens\n"
            f"global batch: {global_batch} sequences x {cfg.seq_len} tokens = "
            f"{global_batch * cfg.seq_len:,} tokens (batch_size {cfg.batch_size} x accum_steps "
            f"{cfg.accum_steps} x world size {self.env.world_size})\n"
            f"run folder: {self.run_dir}"
        )


class _Window:
    """Train statistics accumulated between two log records."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.paused_seconds = 0.0
        self.steps = self.skipped = 0
        self.loss_sum = 0.0
        self.last: dict[str, float] = {}

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent in the block (evaluation, checkpoints) does not count as training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - start

    def seconds(self) -> float:
        """Training time since the window started."""
        return time.perf_counter() - self.start - self.paused_seconds

    def add(self, stats: dict[str, float]) -> None:
        self.steps += 1
        if stats["skipped"]:
            self.skipped += 1
        elif math.isfinite(stats["loss"]):
            self.loss_sum += stats["loss"]
        self.last = stats


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


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _rank_share(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]], total: int, rank: int, world_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches (every world_size-th), padded with fully ignored batches so all ranks run equally often.

    FSDP's forward is collective: a rank that ran out of batches would leave the others waiting.
    """
    mine = 0
    template = None
    for i, (inputs, targets) in enumerate(batches):
        template = inputs
        if i % world_size == rank:
            mine += 1
            yield inputs, targets
    for _ in range(math.ceil(total / world_size) - mine):
        yield torch.zeros_like(template[:1]), torch.full_like(template[:1], IGNORE_INDEX)
