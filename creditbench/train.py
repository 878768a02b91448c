"""The RL loop: collect (method) -> advantages (method) -> loss -> optimiser.

Checkpoints every ``checkpoint_every`` steps hold the model, optimiser, scheduler,
every RNG state and the ledger; the data position is a function of the step. A
run stopped at any point resumes from its last complete checkpoint and ends with
the same weights as an uninterrupted run (bitwise, on CPU).

Outputs in ``out_dir``: ``model/`` (final, ``save_pretrained``), ``metrics.jsonl``
(one line per step; evaluation lines carry ``eval/...`` keys), ``ledger.json``, and
``owned/<name>.pt`` for trainable state a method owns (``MethodContext.own``: a critic),
which checkpoints hold and restore with the policy.
While training, metrics go to ``metrics.partial.jsonl`` and checkpoints to
``checkpoints/``; neither is a declared output, so a workflow manager that clears
the outputs of an interrupted job loses nothing.

Several processes (``accelerate launch --num_processes N -m creditbench.cli train ...``):
data-parallel RL, see ``creditbench.distributed``. Each process collects and assigns
credit on its shard of the step's prompts; the update all-reduces gradients with the
loss normalisers summed over processes, so N processes compute the gradient of one
process on the whole batch (up to float error). The main process writes metrics,
ledger (tokens summed over processes) and checkpoints; every process saves its own
sampling RNG into the checkpoint, so a resumed run with the same N is exact too.

Pre-emption: SIGTERM or SIGUSR1 (a scheduler's pre-emption or time-limit warning) ends
training at the next step boundary with a checkpoint of that step and raises
:class:`Preempted`; the command line exits with :data:`PREEMPTED_EXIT_STATUS`, which
the SLURM profile retries (the run resumes from that checkpoint). ``checkpoint_minutes``
adds a checkpoint at the first step boundary that many minutes after the last one.

One trainer per output folder: the main process holds an exclusive ``flock`` on
``<out>/.train.lock`` while it trains; a second trainer on the same folder (a job
restarted while an orphan of a killed workflow manager still runs) waits for it, then
resumes from its checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import functools
import json
import logging
import os
import random
import shutil
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from creditbench import faults
from creditbench.config import ConfigError, RunConfig
from creditbench.distributed import (
    Collective,
    configure_deepspeed,
    generation_context,
    global_ledger,
    is_sharded,
    make_accelerator,
    merge_update_stats,
    shard,
)
from creditbench.evaluate import evaluate_accuracy
from creditbench.ledger import Ledger
from creditbench.loss import batch_loss, completion_logprobs, needs_old_logprobs
from creditbench.methods import MethodContext, load_method
from creditbench.model import (
    cast_state_dict,
    enable_gradient_checkpointing,
    is_peft_model,
    load_policy,
    load_tokenizer,
    mixed_precision_of,
    needs_master_weights,
    save_policy,
    set_saved_dtype,
)
from creditbench.rollouts import Batch
from creditbench.sampling import Sampler
from creditbench.schedules import get_scheduler
from creditbench.tasks import make_task
from creditbench.utils import (
    atomic_write_json,
    atomic_write_text,
    code_version,
    replace_dir,
    rng_state,
    seed_everything,
    set_rng_state,
)

log = logging.getLogger(__name__)
CKPT_DONE = "COMPLETE"
# SIGTERM: a scheduler's pre-emption or time limit; SIGUSR1: its advance warning
# (sbatch --signal=USR1@<seconds>)
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# the exit status of a pre-empted training process (EX_TEMPFAIL: "try again")
PREEMPTED_EXIT_STATUS = 75
LOCK_FILE = ".train.lock"


class Preempted(Exception):
    """Training stopped on a pre-emption signal after checkpointing ``step``."""

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum
        name = signal.Signals(signum).name
        super().__init__(f"{name}: stopped after checkpointing step {step}")


def problems_for_step(n_problems: int, per_step: int, step: int, seed: int) -> list[int]:
    """Indices of the training prompts of ``step``: epoch-wise shuffles, a function of the step."""
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(k, n_problems)
        out.append(_epoch_order(n_problems, seed, epoch)[pos])
    return out


@functools.lru_cache(maxsize=4)
def _epoch_order(n_problems: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n_problems))
    random.Random(f"data-{seed}-{epoch}").shuffle(order)
    return tuple(order)


def write_manifest(ckpt: Path, step: int) -> None:
    """Mark ``ckpt`` complete: the marker lists every file in it with its size in bytes,
    and is written (atomically) last."""
    files = {
        str(f.relative_to(ckpt)): f.stat().st_size
        for f in sorted(ckpt.rglob("*"))
        if f.is_file() and f.name != CKPT_DONE
    }
    atomic_write_json(ckpt / CKPT_DONE, {"step": step, "files": files})


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` must not be loaded (``None``: it is complete and intact).

    A checkpoint is written to a temporary directory, marked complete and renamed, so a
    process killed while writing leaves no ``step_*`` directory at all. This catches what
    happens afterwards: a marker that is missing or unreadable, a file listed in it that
    is gone or has another size (a partial copy, a full disk, a hand-deleted file).
    """
    marker = ckpt / CKPT_DONE
    if not marker.is_file():
        return f"no {CKPT_DONE} marker (it was never finished)"
    try:
        manifest = json.loads(marker.read_text())
        files = manifest["files"]
        step = int(manifest["step"])
    except (ValueError, KeyError, TypeError) as e:
        return f"its {CKPT_DONE} marker is unreadable ({e})"
    if step != int(ckpt.name.split("_")[1]):
        return f"its marker is for step {step}"
    for name, size in files.items():
        f = ckpt / name
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != size:
            return f"{f} has {f.stat().st_size} bytes, the marker says {size}"
    return None


@contextmanager
def _mixed_precision_env(run: RunConfig):
    """A half-precision full fine-tune on a GPU asks accelerate for ``mixed_precision``
    (``bf16`` / ``fp16``, the ``ACCELERATE_MIXED_PRECISION`` that ``accelerate launch
    --mixed_precision`` sets) when the launch left it unset: the new ``Accelerator`` then
    autocasts the prepared model's forwards and (fp16) scales the loss."""
    if (
        not needs_master_weights(run.model)
        or "ACCELERATE_MIXED_PRECISION" in os.environ
        or not torch.cuda.is_available()
    ):
        yield
        return
    from accelerate.utils import patch_environment

    with patch_environment(ACCELERATE_MIXED_PRECISION=mixed_precision_of(run.model)):
        yield


def _check_precision(run: RunConfig, accelerator) -> bool:
    """Whether the policy trains float32 master weights (``model.needs_master_weights``).

    A full fine-tune of a ``bfloat16`` / ``float16`` model loads float32 weights and runs
    its forwards under accelerate's ``mixed_precision`` of the same dtype (one process,
    DDP, FSDP: FSDP's ``MixedPrecision`` computes in half from float32 shards). DeepSpeed
    keeps float32 masters itself (its bf16 / fp16 optimiser) and loads the model as
    configured. On CPU without mixed precision every model is float32 already. Where
    accelerate's precision is not the model's (an ``Accelerator`` made earlier in the
    process, or a launch config with another precision), a ConfigError names the fix.
    """
    if not needs_master_weights(run.model):
        return False
    want, have = mixed_precision_of(run.model), accelerator.mixed_precision
    if have == want:
        return accelerator.distributed_type != DistributedType.DEEPSPEED
    if have == "no" and accelerator.device.type == "cpu":
        return False  # CPU: a plain float32 run (load_policy), as before
    raise ConfigError(
        f"model.dtype: {run.model.dtype} with full fine-tuning (model.lora: null) trains "
        f"float32 master weights under accelerate's mixed_precision {want!r}, but this "
        f"process's accelerate runs mixed_precision {have!r}"
        + (" (DeepSpeed: its bf16 / fp16 setting)" if have == "no" else "")
        + f": launch with `accelerate launch --mixed_precision {want}` (or set "
        f"mixed_precision: {want} in the accelerate config), or set model.dtype: "
        f"{'bfloat16' if have == 'bf16' else 'float16' if have == 'fp16' else 'float32'}"
    )


def _transformers_models(module) -> list:
    """The outermost transformers (or peft) models inside ``module`` (a critic's backbone)."""
    from transformers import PreTrainedModel

    found: list[tuple[str, object]] = []
    for name, sub in module.named_modules():
        if any(name == p or name.startswith(f"{p}.") for p, _ in found if p):
            continue
        if isinstance(sub, PreTrainedModel) or is_peft_model(sub):
            found.append((name, sub))
            if not name:
                break
    return [m for _, m in found]


class Trainer:
    def __init__(
        self,
        run: RunConfig,
        seed: int,
        init_model: str | Path,
        data_dir: str | Path,
        out_dir: str | Path,
        methods_dir: str | Path | None = None,
        accelerator=None,
    ):
        init_model = Path(init_model)
        if not (init_model / "config.json").is_file():
            raise FileNotFoundError(f"initial model {str(init_model)!r} has no config.json")
        self.run, self.seed = run, seed
        # one process, or one of N under ``accelerate launch`` (DDP / FSDP / DeepSpeed)
        if accelerator is None:
            with _mixed_precision_env(run):
                accelerator = make_accelerator()
        self.accelerator = accelerator
        # float32 master weights under autocast for a half-precision full fine-tune
        self.master_weights = _check_precision(run, accelerator)
        self.dist = Collective(self.accelerator)
        self.world, self.rank = self.dist.world, self.dist.rank
        self.is_main = self.accelerator.is_main_process
        self.sharded = is_sharded(self.accelerator)
        t = run.train
        shard(range(t.prompts_per_step), self.world, 0, "train.prompts_per_step")  # fail early
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.device = self.accelerator.device
        self.task = make_task(run.task, data_dir)
        self.train_problems = self.task.load("train")
        self.eval_problems = self.task.load("test")[: run.train.eval_problems]
        seed_everything(seed)
        self.tokenizer = load_tokenizer(init_model)
        model = load_policy(
            init_model, run.model, self.device, trainable=True, master_weights=self.master_weights
        )
        if t.gradient_checkpointing:  # before the method copies the policy (a critic)
            enable_gradient_checkpointing(model)
        self.ref_model = None
        if run.loss.beta > 0 and run.model.lora is None:
            if self.master_weights:  # the frozen reference needs no float32 copy
                self.ref_model = load_policy(init_model, run.model, self.device, trainable=False)
                self.ref_model.eval()
            else:
                self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=t.lr,
            betas=t.adam_betas,
            weight_decay=t.weight_decay,
        )
        # DDP (or FSDP / DeepSpeed) wrapper for the update's forwards and backwards; one
        # process: the model itself. The bare model is what samples, scores and is saved.
        configure_deepspeed(self.accelerator, t.micro_batch_size)
        self.model_wrapped, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.model = self.accelerator.unwrap_model(self.model_wrapped)
        self.params = [p for p in self.model_wrapped.parameters() if p.requires_grad]
        # FSDP clips through the wrapper, which accelerate finds by its parameter list
        self._clip_params = (
            list(self.model_wrapped.parameters())
            if self.accelerator.distributed_type == DistributedType.FSDP
            else self.params
        )
        if self.world > 1:
            seed_everything(seed + self.rank)  # each process samples its own completions
        self.ledger = Ledger()  # this process's tokens (global_ledger sums them)
        self.sampler = Sampler.for_rollouts(  # sampling.backend: hf or vllm
            self.model,
            self.tokenizer,
            run.sampling,
            self.task,
            self.ledger,
            seed=seed,
            rank=self.rank,
        )
        if self.master_weights:  # a vLLM engine samples in model.dtype, not the masters'
            self.sampler.engine_dtype = run.model.dtype
        module = load_method(run.method, methods_dir)
        # a method's private per-step RNGs (step_rng) differ between processes too
        self.ctx = MethodContext(
            self.model,
            self.tokenizer,
            self.sampler,
            self.task,
            self.ledger,
            run,
            seed + self.rank,
            collective=self.dist,  # cross-process statistics (VinePPO's whitening)
        )
        # a method's own trainable state (a critic) is prepared as the policy is
        self.ctx.prepare_owned = self._prepare_owned
        self.method = module.Method(module.Params(**run.params), self.ctx)
        # not ``accelerator.prepare``d: an AcceleratedScheduler steps once per process,
        # and one scheduler step here is one global optimiser step
        self.scheduler = get_scheduler(
            t.lr_schedule,
            optimizer,
            num_warmup_steps=t.warmup_steps,
            num_training_steps=t.steps * t.epochs * t.minibatches,
        )
        self.step = 0
        self.elapsed = 0.0
        self._stop_signal: int | None = None  # a pre-emption signal received
        self._last_checkpoint = time.monotonic()

    # ------------------------------------------------------------ checkpoints
    def _checkpoints(self) -> list[Path]:
        """The complete, intact checkpoints, oldest first (see :func:`checkpoint_problem`)."""
        if not self.ckpt_dir.is_dir():
            return []
        good = []
        for p in self.ckpt_dir.glob("step_*"):
            problem = checkpoint_problem(p)
            if problem is None:
                good.append(p)
            elif self.is_main:
                log.warning("checkpoint %s is not used: %s", p, problem)
        return sorted(good, key=lambda p: int(p.name.split("_")[1]))

    def save_checkpoint(self) -> None:
        """Collective: every process calls it; the main process writes and renames.

        Each other process adds its sampling RNG (``rng_rank<r>.pt``) to the temporary
        directory before the main process marks it complete and moves it into place.
        """
        acc = self.accelerator
        final = self.ckpt_dir / f"step_{self.step:06d}"
        tmp = self.ckpt_dir / f".tmp_step_{self.step:06d}"
        acc.wait_for_everyone()
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        if self.sharded:  # partitioned weights / optimizer: every process saves its part
            acc.save_state(str(tmp / "accelerate"))
        elif self.is_main:
            self.model.save_pretrained(tmp / "model")
        faults.point("checkpoint")
        ledger = self._global_ledger()
        if self.is_main:
            state = {
                "step": self.step,
                "elapsed": self.elapsed,
                "optimizer": None if self.sharded else self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "ledger": ledger.to_dict(),
            }
            if self.ctx.owned:  # sharded: module and optimiser are in accelerate's state
                state["owned"] = {
                    name: st.state_dict(module=not self.sharded, optimizer=not self.sharded)
                    for name, st in self.ctx.owned.items()
                }
            if self.world > 1:
                state["num_processes"] = self.world
            torch.save(state, tmp / "state.pt")
        else:
            torch.save(rng_state(), tmp / f"rng_rank{self.rank}.pt")
        acc.wait_for_everyone()
        if self.is_main:
            write_manifest(tmp, self.step)
            replace_dir(tmp, final)  # a checkpoint directory is complete or absent
            for old in self._checkpoints()[: -self.run.train.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        self._last_checkpoint = time.monotonic()

    def try_resume(self) -> bool:
        """Collective: every process loads the last complete checkpoint."""
        ckpts = self._checkpoints()
        if not ckpts:
            return False
        path = ckpts[-1]
        state = torch.load(path / "state.pt", weights_only=False)
        if self.sharded:
            self.accelerator.load_state(str(path / "accelerate"))
        else:
            self._load_weights(path / "model")
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        saved_owned = state.get("owned", {})
        for name, st in self.ctx.owned.items():
            if name not in saved_owned:
                raise RuntimeError(
                    f"checkpoint {path} has no state for the method's {name!r} "
                    f"(it holds {sorted(saved_owned)}): was it written by another method?"
                )
            st.load_state_dict(saved_owned[name])
        saved_world = state.get("num_processes", 1)
        rank_rng = path / f"rng_rank{self.rank}.pt"
        if self.rank == 0:
            set_rng_state(state["rng"])
        elif rank_rng.is_file():
            set_rng_state(torch.load(rank_rng, weights_only=False))
        else:
            seed_everything(self.seed + self.rank + 1_000_003 * state["step"])
        if saved_world != self.world and self.is_main:
            log.warning(
                "resuming a checkpoint of %d process(es) with %d: sampling continues from "
                "fresh per-process seeds (not bitwise equal to an uninterrupted run)",
                saved_world,
                self.world,
            )
        # the saved ledger is the global one: the main process carries it on
        self.ledger = Ledger.from_dict(state["ledger"]) if self.rank == 0 else Ledger()
        self.sampler.ledger = self.ctx.ledger = self.ledger
        self.step, self.elapsed = state["step"], state["elapsed"]
        if self.is_main:
            self._truncate_metrics(self.step)
        log.info("resumed from %s", path)
        return True

    def _prepare_owned(self, name, module, optimizer, scheduler, max_grad_norm, ctx):
        """``MethodContext.own`` under the trainer: accelerate places and wraps the
        method's module and optimiser (DDP / FSDP like the policy); the scheduler, as the
        policy's, is not prepared (one step per optimiser step)."""
        from creditbench.methods import OwnedState

        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            # accelerate drives one DeepSpeed engine per Accelerator (its backward is the
            # last prepared engine's): a second model would take over the policy's
            raise ValueError(
                f"run {self.run.name!r}: method {self.run.method!r} owns trainable state "
                f"({name!r}), which DeepSpeed cannot train beside the policy in one "
                "Accelerator; use launch.accelerate_config: ddp or fsdp"
            )
        if self.run.train.gradient_checkpointing:
            for model in _transformers_models(module):
                enable_gradient_checkpointing(model)
        wrapped, optimizer = self.accelerator.prepare(module, optimizer)
        return OwnedState(
            name,
            wrapped,
            optimizer,
            scheduler,
            max_grad_norm,
            ctx=ctx,
            accelerator=self.accelerator,
            unwrapped=self.accelerator.unwrap_model(wrapped),
        )

    def _save_owned(self) -> None:
        """Collective: each method-owned module's weights to ``<out>/owned/<name>.pt``."""
        owned = self.ctx.owned
        if not owned:
            return
        acc = self.accelerator
        states = {
            name: acc.get_state_dict(st.module) if self.sharded else st.unwrapped.state_dict()
            for name, st in owned.items()
        }
        if self.is_main:
            tmp = self.out_dir / ".owned.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            for name, sd in states.items():
                torch.save(sd, tmp / f"{name}.pt")
            replace_dir(tmp, self.out_dir / "owned")
        acc.wait_for_everyone()

    def _load_weights(self, model_dir: Path) -> None:
        from safetensors.torch import load_file

        weights = sorted(model_dir.glob("*.safetensors"))
        state_dict = {}
        for w in weights:
            state_dict.update(load_file(w))
        if hasattr(self.model, "peft_config"):
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.model, state_dict)
        else:
            missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
            real_missing = [k for k in missing if "lm_head" not in k]  # tied embeddings
            if real_missing or unexpected:
                raise RuntimeError(
                    f"checkpoint {model_dir.parent} does not match the model: "
                    f"{real_missing or unexpected}"
                )

    @property
    def partial_metrics(self) -> Path:
        return self.out_dir / "metrics.partial.jsonl"

    def _truncate_metrics(self, step: int) -> None:
        path = self.partial_metrics
        if not path.is_file():
            return
        keep = []
        for ln in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(ln)
            except ValueError:  # the last line of a process killed mid-write
                continue
            if row["step"] <= step:
                keep.append(ln)
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))

    def _global_ledger(self) -> Ledger:
        """Collective: the run's ledger, tokens summed over processes."""
        return global_ledger(self.dist, self.ledger)

    # -------------------------------------------------------------- the update
    def update(self, batch: Batch) -> dict[str, float]:
        """One policy update on this process's ``batch``.

        Several processes: collective. Each process holds its shard of the step's batch;
        minibatch normalisers (loss tokens, sequences) are summed over processes, and
        every process runs the same number of optimiser steps and micro-batches (a
        process short of data runs a zero-weighted one), as DDP's all-reduce requires.
        """
        t, loss_cfg = self.run.train, self.run.loss
        temperature = self.run.sampling.temperature
        world = self.world
        batch = batch.to(self.device)
        tokens = int((batch.prompt_mask.sum() + batch.completion_mask.sum()).item())
        n_updates = t.epochs * t.minibatches
        scorer = self.model_wrapped if self.sharded else self.model  # no-grad forwards
        with torch.no_grad():
            if loss_cfg.beta > 0:
                # LoRA: the reference is the base model with the adapter switched off
                ctx = self.model.disable_adapter() if self.ref_model is None else nullcontext()
                with ctx:
                    batch.ref_logprobs = self._score(self.ref_model or scorer, batch, temperature)
                self.ledger.add_tokens("reference", forwarded=tokens)
            # several passes: a ratio needs the behaviour policy's log-probs (an unclipped
            # ``logprob`` objective without a ratio-weighted KL has none to compute)
            if needs_old_logprobs(loss_cfg, n_updates):
                batch.old_logprobs = self._score(scorer, batch, temperature)
                self.ledger.add_tokens("old_logprobs", forwarded=tokens)
        stats: dict[str, list[float]] = {}
        # accelerate's gradient state is process-global: never inherit a stale "accumulating"
        # (an AcceleratedOptimizer skips its step while it is set)
        self.accelerator.sync_gradients = True
        for _ in range(t.epochs):
            order = torch.randperm(len(batch)) if t.minibatches > 1 else torch.arange(len(batch))
            chunks = list(order.chunk(t.minibatches))
            (n_chunks,) = self.dist.max([len(chunks)])
            chunks += [order[:0]] * (n_chunks - len(chunks))
            for mb_idx in chunks:
                mb = batch.select(mb_idx)
                mask = mb.loss_mask * mb.completion_mask
                n_items, n_seq = float(mask.sum()), len(mb)
                if world > 1:  # the normalisers of the global minibatch
                    n_items, n_seq = self.dist.sum([n_items, n_seq])
                    n_seq = int(n_seq)
                self.optimizer.zero_grad(set_to_none=True)
                parts = mb.micro_batches(t.micro_batch_size)  # normalisers span the minibatch
                (n_micro,) = self.dist.max([len(parts)])
                for j in range(n_micro):
                    last = j == n_micro - 1
                    with self._accumulate(last):
                        if j >= len(parts):  # this process has no more data: weight 0
                            lp = self._logprobs(self.model_wrapped, batch.select([0]), temperature)
                            self.accelerator.backward(lp.sum() * 0.0)
                            continue
                        part = mb.select(parts[j]).trimmed()  # its own width
                        lp = self._logprobs(self.model_wrapped, part, temperature)
                        loss, st = batch_loss(lp, part, loss_cfg, n_items, n_seq)
                        # DDP averages gradients over processes; this process's share of
                        # the global loss, times the process count, makes that average a sum
                        self.accelerator.backward(loss * world if world > 1 else loss)
                    st["loss"] = loss.item()
                    for k, v in st.items():
                        stats.setdefault(k, []).append(v)
                grad_norm = self.accelerator.clip_grad_norm_(self._clip_params, t.max_grad_norm)
                self.optimizer.step()
                faults.point("optimizer")
                self.scheduler.step()
                if grad_norm is not None:  # DeepSpeed clips inside its step
                    stats.setdefault("grad_norm", []).append(float(grad_norm))
        self.ledger.add_tokens("policy_update", forwarded=tokens * n_updates)
        stats = merge_update_stats(self.dist, stats)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["loss"] = sum(stats["loss"]) / t.epochs / t.minibatches  # sum over micro-batches
        return out

    def _accumulate(self, last: bool):
        """Gradient accumulation over a minibatch's micro-batches: gradients are
        synchronised across processes on the last one only (one process: nothing)."""
        deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        if self.world == 1 and not deepspeed:
            return nullcontext()
        if deepspeed:  # DeepSpeed steps inside backward, at an accumulation boundary only
            self.accelerator.sync_gradients = last
        return nullcontext() if last else self.accelerator.no_sync(self.model_wrapped)

    def _score(self, model, batch: Batch, temperature: float) -> torch.Tensor:
        """No-grad log-probs of ``batch``'s completion tokens, ``[B, C]`` (0 past a row's
        end), forwarded in the update's micro-batches (``train.micro_batch_size``, rows of
        similar length together, each at its own width), never the whole batch at once:
        a scoring pass holds no more logits than an update's forward does. Several
        processes: collective, every process as many forwards as the one with the most
        (a process short of data scores a placeholder row, discarded)."""
        parts = batch.micro_batches(self.run.train.micro_batch_size)
        (n_micro,) = self.dist.max([len(parts)])
        out = None
        for j in range(n_micro):
            if j >= len(parts):
                self._logprobs(model, batch.select([0]), temperature)
                continue
            part = batch.select(parts[j]).trimmed()
            lp = self._logprobs(model, part, temperature) * part.completion_mask
            if out is None:
                out = lp.new_zeros(batch.completion_ids.shape)
            out[torch.tensor(parts[j], device=lp.device), : lp.size(1)] = lp
        if out is None:  # no rows
            out = torch.zeros(batch.completion_ids.shape, device=batch.completion_ids.device)
        return out

    def _logprobs(self, model, batch: Batch, temperature: float) -> torch.Tensor:
        return completion_logprobs(
            model,
            batch.prompt_ids,
            batch.prompt_mask,
            batch.completion_ids,
            batch.completion_mask,
            temperature,
        )

    def _generating(self):
        """The bare model samples (never the DDP wrapper); sharded weights are gathered."""
        if not self.sharded:
            return nullcontext()
        return generation_context(self.accelerator, self.model_wrapped)

    # ------------------------------------------------------------------ eval
    def evaluate(self) -> dict[str, float]:
        """Every process evaluates the same problems (same result; sharded backends
        need every process in every forward); the main process records it."""
        with self.ledger.phase("eval"), self._generating():
            res = evaluate_accuracy(
                self.model,
                self.tokenizer,
                self.task,
                self.eval_problems,
                self.run.sampling,
                temperature=self.run.eval.temperature,
                samples=self.run.eval.samples,
                seed=self.run.eval.seed,
            )
        self.model_wrapped.train()
        return {"eval/test/accuracy": res["accuracy"], "eval/test/stderr": res["stderr"]}

    # ------------------------------------------------------------------ loop
    def train(self, until_step: int | None = None) -> dict:
        """Train to ``run.train.steps`` (or stop after ``until_step``, resumable).

        Several processes: every process calls it; the main process writes.
        """
        with self._output_lock(), self._preemption_signals():
            return self._train(until_step)

    @contextmanager
    def _output_lock(self):
        """Collective: the main process holds ``<out>/.train.lock`` (``flock``, released
        when the process ends, however it ends); while another process holds it, wait."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        handle = None
        if self.is_main:
            handle = (self.out_dir / LOCK_FILE).open("a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                log.warning(
                    "%s is locked by another training process (pid %s) on the same run: "
                    "waiting for it to end, then resuming from its checkpoints",
                    self.out_dir / LOCK_FILE,
                    holder,
                )
                fcntl.flock(handle, fcntl.LOCK_EX)
                log.warning("%s acquired: resuming", self.out_dir / LOCK_FILE)
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        self.accelerator.wait_for_everyone()
        try:
            yield
        finally:
            if handle is not None:
                handle.close()  # releases the lock

    @contextmanager
    def _preemption_signals(self):
        """SIGTERM / SIGUSR1 ask for a stop at the next step boundary (main thread only:
        Python runs signal handlers there)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            if self._stop_signal is None:
                log.warning(
                    "%s received: checkpointing at the end of step %d, then exiting",
                    signal.Signals(signum).name,
                    self.step + 1,
                )
            self._stop_signal = signum

        previous = {s: signal.signal(s, request_stop) for s in PREEMPT_SIGNALS}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _boundary_requests(self) -> tuple[bool, bool]:
        """Collective: (stop on a signal, checkpoint on time) at this step boundary, the
        same on every process (any process's signal or clock decides)."""
        minutes = self.run.train.checkpoint_minutes
        flags = [
            float(self._stop_signal is not None),
            float(minutes is not None and time.monotonic() - self._last_checkpoint >= 60 * minutes),
        ]
        if self.world > 1:
            flags = self.dist.sum(flags)
        return flags[0] > 0, flags[1] > 0

    def _train(self, until_step: int | None) -> dict:
        t = self.run.train
        resumed = self.try_resume()
        self._last_checkpoint = time.monotonic()
        if not resumed and self.is_main:
            self._truncate_metrics(-1)
        metrics_path = self.partial_metrics
        stop_at = t.steps if until_step is None else min(until_step, t.steps)
        self.model_wrapped.train()
        with metrics_path.open("a") if self.is_main else nullcontext() as metrics_file:
            if self.step == 0 and t.eval_every and stop_at > 0:
                self._write(metrics_file, {"step": 0, **self.evaluate(), **self._counters()})
            bar = tqdm(
                total=t.steps,
                initial=self.step,
                desc=f"{self.run.name} seed {self.seed}",
                mininterval=2.0,
                disable=not self.is_main,
            )
            while self.step < stop_at:
                t0 = time.perf_counter()
                faults.working_on(self.step + 1)
                step_problems = problems_for_step(
                    len(self.train_problems), t.prompts_per_step, self.step, self.seed
                )
                problems = [
                    self.train_problems[i]
                    for i in shard(step_problems, self.world, self.rank, "train.prompts_per_step")
                ]
                with (
                    self.ledger.phase("collect"),
                    self._generating(),
                    self.sampler.rollouts(self.step),  # an engine takes the current weights
                ):
                    groups = self.method.collect(problems, self.step)
                # a method's scoring forwards of the bare model (OAR's importances) need
                # what sampling needs; its passes run in lockstep over the processes
                with self.ledger.phase("credit"), self._generating():
                    trained = self.method.advantages(groups)
                buffer = [tr for g in groups for tr in g.trajectories]
                with self.ledger.phase("update"):
                    stats = self.update(
                        Batch.from_trajectories(
                            self._batch_rows(trained, buffer), self.tokenizer.pad_token_id
                        )
                    )
                    # the method's own trainable state (a critic), after the policy's update
                    if hasattr(self.method, "update"):
                        stats.update(self.method.update(trained, self.step) or {})
                self.step += 1
                self.elapsed += time.perf_counter() - t0
                # "reward": fresh chains from the prompt only (comparable across methods);
                # "buffer_reward": everything sampled into groups (suffixes, vines, ...)
                rollouts = [tr for tr in buffer if tr.purpose == "rollout"] or buffer
                sums = self.dist.sum(
                    [
                        sum(tr.reward for tr in rollouts),
                        len(rollouts),
                        sum(tr.reward for tr in buffer),
                        len(buffer),
                        sum(tr.reward for tr in trained),
                        len(trained),
                        sum(len(tr.completion_ids) for tr in rollouts),
                    ]
                )
                r_sum, n_roll, b_sum, n_buf, t_sum, n_trained, roll_tokens = sums
                row = {
                    "step": self.step,
                    "reward": r_sum / n_roll,
                    "buffer_reward": b_sum / n_buf,
                    "trained_reward": t_sum / n_trained,
                    "completion_tokens": roll_tokens / n_roll,
                    "trained_sequences": int(n_trained),
                    "lr": self.scheduler.get_last_lr()[0],
                    "step_seconds": time.perf_counter() - t0,
                    **stats,
                    # a method's own per-step diagnostics (SRPO: localisation vs the oracle)
                    **self._step_metrics(),
                }
                if t.eval_every and (self.step % t.eval_every == 0 or self.step == t.steps):
                    row.update(self.evaluate())
                row.update(self._counters())
                self._write(metrics_file, row)
                bar.update(1)
                bar.set_postfix(reward=f"{row['reward']:.2f}")
                stop, timed = self._boundary_requests()
                if self.step % t.checkpoint_every == 0 or self.step == stop_at or stop or timed:
                    with self.ledger.phase("checkpoint"):
                        self.save_checkpoint()
                if stop and self.step < stop_at:
                    bar.close()
                    raise Preempted(self.step, self._stop_signal or signal.SIGTERM)
            bar.close()
        if self.step >= t.steps:
            self._finish()
        return self._global_ledger().to_dict()

    def _batch_rows(self, trained: list, buffer: list) -> list:
        """The trajectories this process trains on. Several processes: one whose shard
        brought nothing to train on contributes a zero-weighted row (it must still take
        part in every all-reduce); none anywhere fails as in one process."""
        if self.world == 1:
            return trained
        (n_total,) = self.dist.sum([len(trained)])
        if trained or not n_total:
            return trained
        if not buffer:
            raise RuntimeError(f"process {self.rank} collected no trajectories")
        row = dataclasses.replace(buffer[0], advantages=None, loss_mask=None)
        return [row.set_credit(0.0, [0.0] * len(row.completion_ids))]

    def _step_metrics(self) -> dict:
        """Collective: the method's per-step diagnostics (``step_metrics``), over every
        process's shard where the method can pool them (``pool_step_metrics``), else the
        main process's shard."""
        metrics = getattr(self.method, "step_metrics", dict)()
        pool = getattr(self.method, "pool_step_metrics", None)
        if self.world > 1 and pool is not None:
            metrics = pool(self.dist.gather(metrics))
        return metrics

    def _counters(self) -> dict:
        ledger = self._global_ledger()
        return {
            "generated_tokens": ledger.total_generated,
            "forwarded_tokens": ledger.total_forwarded,
            "seconds": self.elapsed,
        }

    def _write(self, f, row: dict) -> None:
        if f is None:  # not the main process
            return
        f.write(json.dumps(row) + "\n")
        f.flush()

    def _finish(self) -> None:
        """Collective: the final model, metrics, ledger and config (main process writes)."""
        acc = self.accelerator
        ledger = self._global_ledger().to_dict()
        # sharded backends: the full state dict is gathered by every process
        state_dict = acc.get_state_dict(self.model_wrapped) if self.sharded else None
        self._save_owned()  # before the declared outputs: they mark the run finished
        if self.is_main:
            tmp = self.out_dir / ".model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            if state_dict is None:
                # float32 master weights are saved in the configured dtype
                dtype = getattr(torch, self.run.model.dtype) if self.master_weights else None
                save_policy(self.model, self.tokenizer, tmp, dtype=dtype)
            else:
                if self.master_weights:  # FSDP's float32 shards, saved in model.dtype
                    state_dict = cast_state_dict(state_dict, getattr(torch, self.run.model.dtype))
                self.model.save_pretrained(str(tmp), state_dict=state_dict)
                if self.master_weights:
                    set_saved_dtype(tmp, getattr(torch, self.run.model.dtype))
                self.tokenizer.save_pretrained(str(tmp))
            faults.point("finish")
            replace_dir(tmp, self.out_dir / "model")
            ledger.update(
                {
                    "run": self.run.name,
                    "method": self.run.method,
                    "seed": self.seed,
                    "steps": self.step,
                    "train_seconds": self.elapsed,
                    "code": code_version(),
                }
            )
            if self.world > 1:
                ledger["num_processes"] = self.world
            shutil.copyfile(self.partial_metrics, self.out_dir / ".metrics.jsonl.tmp")
            (self.out_dir / ".metrics.jsonl.tmp").replace(self.out_dir / "metrics.jsonl")
            atomic_write_json(self.out_dir / "ledger.json", ledger)
            atomic_write_json(self.out_dir / "run_config.json", self.run.model_dump(mode="json"))
        acc.wait_for_everyone()
