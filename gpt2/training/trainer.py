"""The trainer: one loop for CPU, one GPU and (under torchrun) FSDP.

Everything that differs between those settings (device, precision, sharding,
compilation) is decided once in ``__init__``; ``fit`` and ``train_step`` are the
same loop everywhere. A step is a pure function of (checkpoint, step number):
the data order comes from the step, and the optimizer, scaler and RNG states
travel in the checkpoint, so a resumed run continues exactly where it stopped.

The trainer puts the run together and runs the loop; the parts have modules of their own: the model
(:mod:`~gpt2.training.model_setup`), the data (:mod:`~gpt2.training.run_data`), resuming
(:mod:`~gpt2.training.resume`), the train log (:mod:`~gpt2.training.log_window`) and the evaluation's
sharding (:mod:`~gpt2.training.eval_shard`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from tqdm import tqdm

from gpt2.checkpoint import find_checkpoint, list_checkpoints, save_checkpoint
from gpt2.data.loader import TrainBatches
from gpt2.device import resolve_device
from gpt2.distributed import all_reduce_mean, barrier
from gpt2.errors import UserError
from gpt2.evaluation import EvalResult, evaluate_loss
from gpt2.inference.artifacts import CHECKPOINT_ADDITIONS
from gpt2.io import atomic_write
from gpt2.model import ModelConfig
from gpt2.tokenizer import Tokenizer
from gpt2.training.config import OptimConfig, TrainConfig
from gpt2.training.eval_shard import rank_eval_batches, scored
from gpt2.training.log_window import TrainLog
from gpt2.training.memory_check import check_training_memory
from gpt2.training.mfu import compute_kind, peak_flops
from gpt2.training.model_setup import build_model, check_init_compatible, recorded_preset, run_model_config
from gpt2.training.optim import build_optimizer, lr_at
from gpt2.training.parallel import init_distributed
from gpt2.training.precision import resolve_precision
from gpt2.training.reporters import Reporter, check_packages, open_reporters
from gpt2.training.resume import (
    checkpoint_meta,
    checkpoint_to_resume,
    restore_training_state,
    resumed_configs,
    trainer_state,
)
from gpt2.training.run_data import open_run_data
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
        resume_from = checkpoint_to_resume(self.run_dir, self.cfg.resume, announce=self.env.is_main)
        if resume_from is not None:
            self.cfg, self.optim_cfg, changes = resumed_configs(self.cfg, self.optim_cfg, resume_from, given)
            for line in changes if self.env.is_main else []:
                print(line)
        cfg = self.cfg
        check_packages(cfg.report_to)  # on every rank: all stop alike
        self.precision = resolve_precision(cfg.amp_fp16, cfg.amp_bf16, cfg.bf16, cfg.allow_tf32, self.device)
        if self.env.distributed and self.precision.loss_scaling:
            raise UserError("--amp_fp16 is not supported with FSDP; use --amp_bf16 or --bf16")
        self.tokenizer = tokenizer or Tokenizer.load(cfg.tokenizer)
        self.data = open_run_data(cfg.data_dir, self.tokenizer, cfg.seq_len, cfg.batch_size)

        # A resumed run has its weights in its own checkpoint; --init_from starts a new run only.
        init_from = find_checkpoint(cfg.init_from) if cfg.init_from and resume_from is None else None
        if init_from is not None:
            model_cfg = model_cfg or init_from.model_config
            check_init_compatible(init_from, model_cfg, self.tokenizer, cfg.tokenizer)
        self.cfg = cfg = dataclasses.replace(cfg, preset=recorded_preset(cfg.preset, init_from, resume_from))
        barrier()  # every rank has looked at the run folder before rank 0 writes to it
        model_cfg = run_model_config(cfg, model_cfg, self.tokenizer, self.data, resume_from, self.env.is_main)
        self.memory_estimate = check_training_memory(
            model_cfg, cfg, self.precision.name, self.device, self.env.world_size, announce=self.env.is_main
        )
        built = build_model(model_cfg, cfg, self.precision, self.device, self.env, init_from)
        self.model, self.forward, self.autocast_dtype = built.model, built.forward, built.autocast_dtype
        self.optimizer = build_optimizer(self.model, self.optim_cfg, self.device.type)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.loss_scaling)
        self.flops_per_token = self.model.flops_per_token(cfg.seq_len)
        self.peak_flops = peak_flops(self.device, compute_kind(self.precision.compute_dtype, cfg.allow_tf32))
        self.batches = TrainBatches(
            self.data.train, cfg.seq_len, cfg.batch_size, cfg.seed,
            rank=self.env.rank, world_size=self.env.world_size, accum_steps=cfg.accum_steps,
        )
        self.token_bytes = self.tokenizer.token_byte_lengths()  # for bits per byte

        self.step = 0
        self.bad_steps = 0  # consecutive steps with a non-finite loss or gradient
        self.resumed_from = resume_from
        if resume_from is not None:
            self.step = restore_training_state(
                resume_from, self.model, self.optimizer, self.scaler, self.env, self.cfg.trust_checkpoint
            )
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
    def _configs(self) -> dict[str, Any]:
        """The run's settings, as run_config_step<N>.json and the experiment trackers record them."""
        return {"train_config": self.cfg.to_dict(), "optim_config": asdict(self.optim_cfg),
                "model_config": self.model.cfg.to_dict()}

    def _open_reporters(self) -> list[Reporter]:
        step = self.step if self.cfg.resume else None
        return open_reporters(self.cfg.report_to, self.run_dir, step, self._configs())

    def _write_run_config(self) -> None:
        record = {
            "argv": sys.argv,
            **self._configs(),
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
        log = self._train_log()
        # The handlers stay on to the end: a signal during the final save or evaluation must not kill the run.
        with StopRequest() as stop:
            while self.step < cfg.max_steps:
                stats = self.train_step()
                self.step += 1
                log.add(self.step, stats)
                if self.bad_steps >= cfg.max_bad_steps:
                    log.close()
                    self._stop_on_bad_steps(stats)
                if self._stop_requested(stop):
                    log.close()
                    path = self._save_if_sound()
                    if self.env.is_main:
                        print(f"stopped at step {self.step}; {self._saved(path)}\n"
                              "resume: the same command with --resume (launchers: RESUME=true)")
                    return last_eval
                final = self.step == cfg.max_steps
                with log.paused():  # tokens/s counts training time only
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and not final:
                        self._save_if_sound()
                    if cfg.eval_every and self.step % cfg.eval_every == 0 and not final:
                        last_eval = self.evaluate()
                        if self.env.is_main:
                            log.write(f"step {self.step}: eval loss {last_eval.loss:.4f}, bits per byte "
                                      f"{last_eval.bits_per_byte:.4f} over {self._scored(last_eval)}")
            log.close()
            # Save before the final evaluation, which can take minutes: a stop during it then loses nothing.
            path = self._save_if_sound()
            if self._nothing_trained() and self.env.is_main:
                print(f"nothing to train: the run is at step {self.step} (--max_steps {cfg.max_steps})")
            last_eval = self.evaluate()
        if self.env.is_main:
            print(
                f"step {self.step}: eval loss {last_eval.loss:.4f}, perplexity {last_eval.perplexity:.2f}, "
                f"bits per byte {last_eval.bits_per_byte:.4f} over {self._scored(last_eval)}\n{self._saved(path)}"
            )
        return last_eval

    def _train_log(self) -> TrainLog:
        """The progress bar and the train records, from this step on."""
        cfg = self.cfg
        return TrainLog(
            self.metrics, self.step, cfg.max_steps, cfg.log_every,
            tokens_per_step=self.batches.global_batch * cfg.seq_len, flops_per_token=self.flops_per_token,
            peak_flops=self.peak_flops, world_size=self.env.world_size, device=self.device,
            progress=cfg.progress and self.env.is_main,
        )

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
            logits = self._logits(inputs)
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

    def _logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The forward pass, under autocast when the precision computes in a lower one than the weights."""
        if self.autocast_dtype is None:
            return self.forward(tokens)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self.forward(tokens)

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

    # ------------------------------------------------------- eval and saving
    @torch.no_grad()
    def evaluate(self) -> EvalResult:
        """The loss over the eval set (its first --eval_batches), shared out among the ranks."""
        self.model.eval()
        cfg, env = self.cfg, self.env
        batches, total = rank_eval_batches(self.data.eval, cfg.seq_len, cfg.batch_size, cfg.eval_batches, env)
        result = evaluate_loss(
            self._logits, batches, self.token_bytes, device=self.device, total=total, all_reduce=env.distributed
        )
        self.metrics.write("eval", self.step, **result.to_dict())
        return result

    def _scored(self, result: EvalResult) -> str:
        return scored(result, len(self.data.eval), self.cfg.seq_len)

    def save(self) -> Path:
        """A checkpoint of this step; the older ones beyond --keep_checkpoints are pruned (but deploy's)."""
        tokens_seen = self.step * self.batches.global_batch * self.cfg.seq_len
        meta = checkpoint_meta(self.cfg, self.optim_cfg, self.precision.name, tokens_seen, self.data)
        try:
            return save_checkpoint(
                self.run_dir, self.step, self.model, self.optimizer, self.tokenizer.data, meta,
                trainer_state(self.step, self.scaler), self.cfg.keep_checkpoints, self.env, CHECKPOINT_ADDITIONS,
            )
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
            f"data: {len(self.data.train):,} train tokens, {len(self.data.eval):,} eval tokens\n"
            f"global batch: {global_batch} sequences x {cfg.seq_len} tokens = "
            f"{global_batch * cfg.seq_len:,} tokens (batch_size {cfg.batch_size} x accum_steps "
            f"{cfg.accum_steps} x world size {self.env.world_size})\n"
            f"run folder: {self.run_dir}"
        )
