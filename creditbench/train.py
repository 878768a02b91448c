"""The RL loop: collect (method) -> advantages (method) -> loss -> optimiser.

Checkpoints every ``checkpoint_every`` steps hold the model, optimiser, scheduler,
every RNG state and the ledger; the data position is a function of the step. A
run stopped at any point resumes from its last complete checkpoint and ends with
the same weights as an uninterrupted run (bitwise, on CPU).

Outputs in ``out_dir``: ``model/`` (final, ``save_pretrained``), ``metrics.jsonl``
(one line per step; evaluation lines carry ``eval/...`` keys), ``ledger.json``.
While training, metrics go to ``metrics.partial.jsonl`` and checkpoints to
``checkpoints/``; neither is a declared output, so a workflow manager that clears
the outputs of an interrupted job loses nothing.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from creditbench.config import RunConfig
from creditbench.evaluate import evaluate_accuracy
from creditbench.ledger import Ledger
from creditbench.loss import completion_logprobs, policy_loss
from creditbench.methods import MethodContext, load_method
from creditbench.model import default_device, load_policy, load_tokenizer, save_policy
from creditbench.rollouts import Batch
from creditbench.sampling import Sampler
from creditbench.tasks import make_task
from creditbench.utils import (
    atomic_write_json,
    code_version,
    rng_state,
    seed_everything,
    set_rng_state,
)

log = logging.getLogger(__name__)
CKPT_DONE = "COMPLETE"


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


class Trainer:
    def __init__(
        self,
        run: RunConfig,
        seed: int,
        init_model: str | Path,
        data_dir: str | Path,
        out_dir: str | Path,
        methods_dir: str | Path | None = None,
    ):
        init_model = Path(init_model)
        if not (init_model / "config.json").is_file():
            raise FileNotFoundError(f"initial model {str(init_model)!r} has no config.json")
        self.run, self.seed = run, seed
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.device = default_device()
        self.task = make_task(run.task, data_dir)
        self.train_problems = self.task.load("train")
        self.eval_problems = self.task.load("test")[: run.train.eval_problems]
        seed_everything(seed)
        self.tokenizer = load_tokenizer(init_model)
        self.model = load_policy(init_model, run.model, self.device, trainable=True)
        self.ref_model = None
        if run.loss.beta > 0 and run.model.lora is None:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.ledger = Ledger()
        self.sampler = Sampler(self.model, self.tokenizer, run.sampling, self.ledger)
        module = load_method(run.method, methods_dir)
        self.ctx = MethodContext(
            self.model, self.tokenizer, self.sampler, self.task, self.ledger, run, seed
        )
        self.method = module.Method(module.Params(**run.params), self.ctx)
        t = run.train
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=t.lr, betas=t.adam_betas, weight_decay=t.weight_decay
        )
        self.scheduler = get_scheduler(
            t.lr_schedule,
            self.optimizer,
            num_warmup_steps=t.warmup_steps,
            num_training_steps=t.steps * t.epochs * t.minibatches,
        )
        self.step = 0
        self.elapsed = 0.0

    # ------------------------------------------------------------ checkpoints
    def _checkpoints(self) -> list[Path]:
        if not self.ckpt_dir.is_dir():
            return []
        done = [p for p in self.ckpt_dir.glob("step_*") if (p / CKPT_DONE).is_file()]
        return sorted(done, key=lambda p: int(p.name.split("_")[1]))

    def save_checkpoint(self) -> None:
        final = self.ckpt_dir / f"step_{self.step:06d}"
        tmp = self.ckpt_dir / f".tmp_step_{self.step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp / "model")
        torch.save(
            {
                "step": self.step,
                "elapsed": self.elapsed,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng_state(),
                "ledger": self.ledger.to_dict(),
            },
            tmp / "state.pt",
        )
        (tmp / CKPT_DONE).write_text(str(self.step))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # atomic: a checkpoint directory is complete or absent
        for old in self._checkpoints()[: -self.run.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def try_resume(self) -> bool:
        ckpts = self._checkpoints()
        if not ckpts:
            return False
        path = ckpts[-1]
        from safetensors.torch import load_file

        weights = sorted((path / "model").glob("*.safetensors"))
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
                    f"checkpoint {path} does not match the model: {real_missing or unexpected}"
                )
        state = torch.load(path / "state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.ledger = Ledger.from_dict(state["ledger"])
        self.sampler.ledger = self.ctx.ledger = self.ledger
        self.step, self.elapsed = state["step"], state["elapsed"]
        self._truncate_metrics(self.step)
        log.info("resumed from %s", path)
        return True

    @property
    def partial_metrics(self) -> Path:
        return self.out_dir / "metrics.partial.jsonl"

    def _truncate_metrics(self, step: int) -> None:
        path = self.partial_metrics
        if path.is_file():
            keep = [
                ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step
            ]
            path.write_text("".join(ln + "\n" for ln in keep))

    # -------------------------------------------------------------- the update
    def update(self, batch: Batch) -> dict[str, float]:
        t, loss_cfg = self.run.train, self.run.loss
        temperature = self.run.sampling.temperature
        batch = batch.to(self.device)
        tokens = int((batch.prompt_mask.sum() + batch.completion_mask.sum()).item())
        n_updates = t.epochs * t.minibatches
        with torch.no_grad():
            if loss_cfg.beta > 0:
                # LoRA: the reference is the base model with the adapter switched off
                ctx = self.model.disable_adapter() if self.ref_model is None else nullcontext()
                with ctx:
                    batch.ref_logprobs = self._logprobs(
                        self.ref_model or self.model, batch, temperature
                    )
                self.ledger.add_tokens("reference", forwarded=tokens)
            if n_updates > 1:  # several passes: the ratio needs the behaviour policy's log-probs
                batch.old_logprobs = self._logprobs(self.model, batch, temperature)
                self.ledger.add_tokens("old_logprobs", forwarded=tokens)
        stats: dict[str, list[float]] = {}
        for _ in range(t.epochs):
            order = torch.randperm(len(batch)) if t.minibatches > 1 else torch.arange(len(batch))
            for mb_idx in order.chunk(t.minibatches):
                mb = batch.select(mb_idx)
                mask = mb.loss_mask * mb.completion_mask
                n_items, n_seq = float(mask.sum()), len(mb)
                self.optimizer.zero_grad(set_to_none=True)
                micro = t.micro_batch_size or len(mb)
                # micro-batches of similar length pad less (normalisers span the minibatch)
                by_length = mb.completion_mask.sum(-1).argsort().tolist()
                for start in range(0, len(mb), micro):
                    part = mb.select(by_length[start : start + micro])
                    lp = self._logprobs(self.model, part, temperature)
                    loss, st = policy_loss(
                        lp,
                        part.advantages,
                        part.loss_mask * part.completion_mask,
                        loss_cfg,
                        old_logprobs=part.old_logprobs,
                        ref_logprobs=part.ref_logprobs,
                        num_items=n_items,
                        num_sequences=n_seq,
                    )
                    loss.backward()
                    st["loss"] = loss.item()
                    for k, v in st.items():
                        stats.setdefault(k, []).append(v)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                stats.setdefault("grad_norm", []).append(float(grad_norm))
        self.ledger.add_tokens("policy_update", forwarded=tokens * n_updates)
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        out["loss"] = sum(stats["loss"]) / t.epochs / t.minibatches  # sum over micro-batches
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

    # ------------------------------------------------------------------ eval
    def evaluate(self) -> dict[str, float]:
        with self.ledger.phase("eval"):
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
        self.model.train()
        return {"eval/test/accuracy": res["accuracy"], "eval/test/stderr": res["stderr"]}

    # ------------------------------------------------------------------ loop
    def train(self, until_step: int | None = None) -> dict:
        """Train to ``run.train.steps`` (or stop after ``until_step``, resumable)."""
        t = self.run.train
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = self.try_resume()
        if not resumed:
            self._truncate_metrics(-1)
        metrics_path = self.partial_metrics
        stop_at = t.steps if until_step is None else min(until_step, t.steps)
        self.model.train()
        with metrics_path.open("a") as metrics_file:
            if self.step == 0 and t.eval_every and stop_at > 0:
                self._write(metrics_file, {"step": 0, **self.evaluate(), **self._counters()})
            bar = tqdm(
                total=t.steps,
                initial=self.step,
                desc=f"{self.run.name} seed {self.seed}",
                mininterval=2.0,
            )
            while self.step < stop_at:
                t0 = time.perf_counter()
                problems = [
                    self.train_problems[i]
                    for i in problems_for_step(
                        len(self.train_problems), t.prompts_per_step, self.step, self.seed
                    )
                ]
                with self.ledger.phase("collect"):
                    groups = self.method.collect(problems, self.step)
                with self.ledger.phase("credit"):
                    trained = self.method.advantages(groups)
                with self.ledger.phase("update"):
                    stats = self.update(
                        Batch.from_trajectories(trained, self.tokenizer.pad_token_id)
                    )
                self.step += 1
                self.elapsed += time.perf_counter() - t0
                # "reward": fresh chains from the prompt only (comparable across methods);
                # "buffer_reward": everything sampled into groups (suffixes, vines, ...)
                buffer = [tr for g in groups for tr in g.trajectories]
                rollouts = [tr for tr in buffer if tr.purpose == "rollout"] or buffer
                row = {
                    "step": self.step,
                    "reward": sum(tr.reward for tr in rollouts) / len(rollouts),
                    "buffer_reward": sum(tr.reward for tr in buffer) / len(buffer),
                    "trained_reward": sum(tr.reward for tr in trained) / len(trained),
                    "completion_tokens": sum(len(tr.completion_ids) for tr in rollouts)
                    / len(rollouts),
                    "trained_sequences": len(trained),
                    "lr": self.scheduler.get_last_lr()[0],
                    "step_seconds": time.perf_counter() - t0,
                    **stats,
                }
                if t.eval_every and (self.step % t.eval_every == 0 or self.step == t.steps):
                    row.update(self.evaluate())
                row.update(self._counters())
                self._write(metrics_file, row)
                bar.update(1)
                bar.set_postfix(reward=f"{row['reward']:.2f}")
                if self.step % t.checkpoint_every == 0 or self.step == stop_at:
                    with self.ledger.phase("checkpoint"):
                        self.save_checkpoint()
            bar.close()
        if self.step >= t.steps:
            self._finish()
        return self.ledger.to_dict()

    def _counters(self) -> dict:
        return {
            "generated_tokens": self.ledger.total_generated,
            "forwarded_tokens": self.ledger.total_forwarded,
            "seconds": self.elapsed,
        }

    def _write(self, f, row: dict) -> None:
        f.write(json.dumps(row) + "\n")
        f.flush()

    def _finish(self) -> None:
        tmp = self.out_dir / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_policy(self.model, self.tokenizer, tmp)
        final = self.out_dir / "model"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        ledger = self.ledger.to_dict()
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
        shutil.copyfile(self.partial_metrics, self.out_dir / ".metrics.jsonl.tmp")
        (self.out_dir / ".metrics.jsonl.tmp").replace(self.out_dir / "metrics.jsonl")
        atomic_write_json(self.out_dir / "ledger.json", ledger)
        atomic_write_json(self.out_dir / "run_config.json", self.run.model_dump(mode="json"))
