"""PPO with a learned critic: GAE over completion tokens (the VinePPO paper's PPO baseline:
Kazemnejad et al., arXiv 2410.01679; code McGill-NLP/VinePPO, ``PPOTrainer`` in
``src/treetune/trainers/ppo_trainer.py``, settings in ``configs/trainers/ppo_MATH.jsonnet``
with ``configs/trainers/lam1.jsonnet``, ``refKl0.0001.jsonnet`` and ``klLoss.jsonnet``, as
``configs/polIter_*_ppo_*.jsonnet`` import them).

1. Rollouts. Per prompt, G = ``train.group_size`` completions i.i.d. (the code: 8 per
   prompt, 64 prompts per iteration); ``R(y)`` from the verifier.
2. Values. A critic gives ``V(s_t)`` for every completion token t, the state
   ``s_t = (x0, y_<t)``: a linear head on the last hidden state at the state's last token
   (the code's ``PreTrainedModelForValueNetwork.forward``; ``values[:, :-1]`` aligned to
   the actions in ``PPOTrainer._training_step``). ``V(s_n) = 0`` after the last token
   (the code masks the value past the response to 0 in ``_compute_advantages``).
3. Rewards. ``r_t = 0`` except the last token, ``r_{n-1} = R(y)`` (``_compute_rewards``:
   the score at the last response token; the KL is in the loss, not the reward, because
   the configs set ``kl_penalty_loss_type``, so there is no per-token KL reward).
4. GAE (``_compute_advantages``): ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)``,
   ``A_t = delta_t + gamma lam A_{t+1}``, returns ``G_t = A_t + V(s_t)``, with
   ``gamma`` = 1 and ``lam`` = 1 (``ppo_MATH.jsonnet`` sets 0.96 and every PPO config
   imports ``lam1.jsonnet`` after it). With gamma = lam = 1, ``A_t = R(y) - V(s_t)``.
5. Whitening (``whiten_advantages: true``; ``whiten_rewards: false``):
   ``(A - mean) / sqrt(var + 1e-8)``, unbiased variance, over the trained tokens of the
   step's batch on every process (the code: ``masked_whiten(distributed=True,
   unbiased_variance=True)``, per optimiser micro-batch; here once per step, as VinePPO's
   file does). The returns are not whitened.
6. Policy loss (``DEFAULTS``, the engine's, the code's ``_compute_actor_loss``): clipped,
   epsilon 0.2 (``cliprange``), 2 epochs (``num_epochs_per_iteration``), token mean over
   the batch (``aggregation: dapo``), KL ``1e-4 * clamp(k3, 0, 10)`` summed per sequence
   and averaged over sequences (``init_kl_coef`` 1e-4, ``control_variate``, clip 0..10).
7. Critic loss (``_compute_critics_loss``): with the values ``V_old`` of step 2 (the
   critic before this step's update) and the returns G,
   ``L_V = 0.5 * mean_t max((V - G)^2, (clip(V, V_old - c, V_old + c) - G)^2)`` with
   ``c`` = ``value_clip`` 0.2 (``cliprange_value``), a token mean. The critic is trained
   for the same epochs and minibatches as the policy, with its own optimiser: the code
   gives critic and actor the same ``general_training_args`` (AdamW, lr 1e-6, warmup
   ratio 0.03, weight decay 0, ``max_grad_norm`` 1), so ``critic_lr`` etc. default to
   the run's ``train`` settings. The code's ``vf_coef`` (0.1) is unused by a separate
   critic (its loss has its own engine) and is not a parameter here.

Choices, each a parameter below:
- ``critic`` [choice]: ``separate`` (default; the code's ``critic_model``, a
  ``pretrained_causal_lm_with_value_head`` whose backbone is the SFT checkpoint the policy
  starts from): a copy of the policy at the start of training with a value head, all its
  weights trained by the value loss (a LoRA policy's copy trains its adapters and the
  head). ``head``: a value head on the policy's own trunk; the value loss trains the head
  only, on the trunk's hidden states (computed without a gradient, by the policy as it is
  after the step's policy update), so the critic costs no second model and the value loss
  does not shape the policy.
- Value head initialisation (the code's ``_init_value_head``): weights normal with std
  ``1 / sqrt(hidden + 1)``, bias 0, in float32, from a generator seeded by the run's seed
  (so the global RNG streams are those of a run without a critic).
- ``value_clip`` (0.2; null: no clipping); ``gamma``, ``lam``; ``whiten`` and its
  statistics as VinePPO's (``whiten_std``, ``whiten_eps``, ``whiten_across_processes``).
- Critic optimiser: ``critic_lr`` (null: ``train.lr``), ``critic_warmup_steps`` (null:
  ``train.warmup_steps``), ``critic_max_grad_norm`` (null: ``train.max_grad_norm``); the
  schedule, betas and weight decay are the run's ``train`` settings. ``critic_epochs`` /
  ``critic_minibatches`` (null: ``train.epochs`` / ``train.minibatches``). Minibatch order:
  a permutation from a generator seeded by the run's seed and the step.
- The critic loss is a token mean over each minibatch (summed over processes), the code's
  ``masked_mean`` over its optimiser batch.

Deviations from the official code: advantages are whitened once over the step's batch
(the code: per optimiser micro-batch); the critic is updated after the policy's epochs, not
interleaved micro-batch by micro-batch with the actor (the two losses share no parameters,
so with the same batches the updates are the same, up to the minibatch order); no
``ratio_threshold`` micro-batch skipping; the critic's values are computed once per step
with the critic before the update (the code's ``_update_episodes_with_values``, the same).

Several processes: the critic's value forwards, its minibatches and micro-batches (each
backward all-reduces its gradients; under FSDP every forward is a collective too) and,
with ``critic: head``, the policy's trunk forwards run in ``lockstep``
(``creditbench.distributed``): a process with fewer rows runs placeholder passes (a
backward weighted 0) and the same optimiser steps, whatever its shard holds.

Compute ledger: rollouts ``rollout``; the critic's value forwards ``critic_forward``
(with ``critic: head``, the policy's forward for the trunk's hidden states too); its
training forwards and backwards ``critic_update``.
"""

from __future__ import annotations

import copy
import importlib.util
import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from creditbench.distributed import lockstep
from creditbench.rollouts import Group, Trajectory
from creditbench.schedules import get_scheduler

DEFAULTS = {
    "loss": {
        "clip": True,
        "epsilon": 0.2,
        "beta": 1e-4,
        "aggregation": "dapo",
        "kl_reduction": "sequence_sum",
        "kl_clamp": 10.0,
    },
    "train": {"epochs": 2},
}


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    critic: Literal["separate", "head"] = "separate"  # [choice], see the docstring
    gamma: float = Field(1.0, ge=0, le=1)  # code: gamma 1.0
    lam: float = Field(1.0, ge=0, le=1)  # code: lam 1 (lam1.jsonnet)
    value_clip: float | None = Field(0.2, gt=0)  # code: cliprange_value 0.2
    whiten: bool = True  # code: whiten_advantages
    whiten_std: Literal["unbiased", "population"] = "unbiased"  # code: unbiased_variance
    whiten_eps: float = Field(1e-8, ge=0)
    whiten_across_processes: bool = True  # code: masked_whiten(distributed=True)
    critic_lr: float | None = Field(None, gt=0)  # null: train.lr (code: the same lr)
    critic_warmup_steps: int | None = Field(None, ge=0)  # null: train.warmup_steps
    critic_max_grad_norm: float | None = Field(None, gt=0)  # null: train.max_grad_norm
    critic_epochs: int | None = Field(None, ge=1)  # null: train.epochs
    critic_minibatches: int | None = Field(None, ge=1)  # null: train.minibatches


# ----------------------------------------------------------------------------- credit rule
def token_rewards(n_tokens: int, reward: float) -> list[float]:
    """``r_t``: 0 on every completion token but the last, which carries ``R(y)``."""
    if n_tokens < 1:
        raise ValueError("a completion has at least one token")
    return [0.0] * (n_tokens - 1) + [float(reward)]


def gae(
    rewards: Sequence[float], values: Sequence[float], gamma: float, lam: float
) -> tuple[list[float], list[float]]:
    """Generalised advantage estimates and returns over one completion's tokens.

    ``values``: ``V(s_0) .. V(s_{n-1})``; the state after the last token has value 0.
    ``delta_t = r_t + gamma V(s_{t+1}) - V(s_t)``, ``A_t = delta_t + gamma lam A_{t+1}``
    (``A_n = 0``), returns ``G_t = A_t + V(s_t)``.
    """
    if len(rewards) != len(values):
        raise ValueError(f"{len(rewards)} rewards for {len(values)} values")
    n = len(values)
    adv = [0.0] * n
    running = 0.0
    for t in reversed(range(n)):
        next_value = float(values[t + 1]) if t + 1 < n else 0.0
        delta = float(rewards[t]) + gamma * next_value - float(values[t])
        running = delta + gamma * lam * running
        adv[t] = running
    return adv, [a + float(v) for a, v in zip(adv, values, strict=True)]


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float | None,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """``0.5 * sum_t m_t max((V - G)^2, (V_clipped - G)^2) / num_tokens``.

    ``V_clipped = clip(V, V_old - clip, V_old + clip)`` (``clip`` None: the unclipped
    squared error). ``num_tokens``: the minibatch's masked token count when this is one
    micro-batch of it (default: this batch's). ``clip_fraction``: the share of tokens where
    the clipped term is the larger (its gradient is then 0).
    """
    mask = mask.to(values.dtype)
    err = (values - returns) ** 2
    if clip is None:
        per_token = err
        clipped_frac = 0.0
    else:
        v_clip = torch.clamp(values, old_values - clip, old_values + clip)
        err_clip = (v_clip - returns) ** 2
        per_token = torch.max(err, err_clip)
        with torch.no_grad():
            clipped_frac = float(((err_clip > err).to(mask.dtype) * mask).sum())
    denom = max(float(num_tokens if num_tokens is not None else mask.sum().item()), 1.0)
    loss = 0.5 * (per_token * mask).sum() / denom
    n = max(float(mask.sum().item()), 1.0)
    with torch.no_grad():
        stats = {
            "mse": float((err * mask).sum() / n),
            "clip_fraction": clipped_frac / n,
            "value_mean": float((values * mask).sum() / n),
        }
    return loss, stats


def _bundled(name: str):
    """A bundled method file's module (its pure functions), whatever shadows its name."""
    from creditbench.methods import DEFAULT_METHODS_DIR

    path = DEFAULT_METHODS_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"creditbench_ppo_uses_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


whiten = _bundled("vineppo").whiten  # VinePPO's whitening (the same statistics)


# ----------------------------------------------------------------------------- the critic
def pad_rows(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int, device
) -> tuple[torch.Tensor, ...]:
    """Prompts left-padded, completions right-padded (the engine's ``Batch`` layout)."""
    b = len(prompts)
    p = max(len(x) for x in prompts)
    c = max(max(len(x) for x in completions), 1)
    prompt_ids = torch.full((b, p), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((b, p), dtype=torch.long)
    completion_ids = torch.full((b, c), pad_id, dtype=torch.long)
    completion_mask = torch.zeros((b, c), dtype=torch.long)
    for i, (pr, co) in enumerate(zip(prompts, completions, strict=True)):
        prompt_ids[i, p - len(pr) :] = torch.tensor(list(pr), dtype=torch.long)
        prompt_mask[i, p - len(pr) :] = 1
        if co:
            completion_ids[i, : len(co)] = torch.tensor(list(co), dtype=torch.long)
            completion_mask[i, : len(co)] = 1
    return tuple(t.to(device) for t in (prompt_ids, prompt_mask, completion_ids, completion_mask))


def state_hidden(model, prompt_ids, prompt_mask, completion_ids, completion_mask) -> torch.Tensor:
    """The last hidden state at each state's last token: ``[B, C, H]``, row t for
    ``s_t = (x0, y_<t)`` (the prompt's last token for t = 0)."""
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([prompt_mask, completion_mask], dim=1)
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids,
        output_hidden_states=True,
        use_cache=False,
        logits_to_keep=1,
    )
    p, c = prompt_ids.size(1), completion_ids.size(1)
    return out.hidden_states[-1][:, p - 1 : p - 1 + c]


class ValueModel(torch.nn.Module):
    """A value head, on its own backbone (``critic: separate``) or on given hidden states."""

    def __init__(self, hidden_size: int, backbone=None, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(hidden_size, 1, bias=True, dtype=torch.float32)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # the code's _init_value_head
            std = 1.0 / math.sqrt(hidden_size + 1)
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=g) * std)
            self.head.bias.zero_()

    def forward(
        self,
        prompt_ids=None,
        prompt_mask=None,
        completion_ids=None,
        completion_mask=None,
        features=None,
    ) -> torch.Tensor:
        """``V(s_t)`` for every completion position, ``[B, C]`` in float32."""
        if features is None:
            features = state_hidden(
                self.backbone, prompt_ids, prompt_mask, completion_ids, completion_mask
            )
        return self.head(features.to(self.head.weight.dtype)).squeeze(-1)


def _hidden_size(model) -> int:
    cfg = getattr(model, "config", None)
    size = getattr(cfg, "hidden_size", None)
    if not isinstance(size, int):
        raise ValueError("ppo: the policy's config has no hidden_size for the value head")
    return size


# ----------------------------------------------------------------------------- the method
class Method:
    def __init__(self, params: Params, ctx):
        self.params = params
        self.ctx = ctx
        t = ctx.run.train
        p = params
        policy = ctx.model
        if p.critic == "separate":
            backbone = copy.deepcopy(policy)
            if not hasattr(backbone, "peft_config"):  # a LoRA copy keeps its adapters trainable
                backbone.requires_grad_(True)
            module = ValueModel(_hidden_size(policy), backbone, seed=ctx.seed)
        else:
            module = ValueModel(_hidden_size(policy), None, seed=ctx.seed)
        optimizer = torch.optim.AdamW(
            [q for q in module.parameters() if q.requires_grad],
            lr=p.critic_lr or t.lr,
            betas=t.adam_betas,
            weight_decay=t.weight_decay,
        )
        self.epochs = p.critic_epochs or t.epochs
        self.minibatches = p.critic_minibatches or t.minibatches
        scheduler = get_scheduler(
            t.lr_schedule,
            optimizer,
            num_warmup_steps=t.warmup_steps
            if p.critic_warmup_steps is None
            else p.critic_warmup_steps,
            num_training_steps=t.steps * self.epochs * self.minibatches,
        )
        self.critic = ctx.own(
            "critic", module, optimizer, scheduler, p.critic_max_grad_norm or t.max_grad_norm
        )

    # -------------------------------------------------------------------- sampling
    def collect(self, problems, step: int) -> list[Group]:
        G = self.ctx.run.train.group_size
        return [Group(trajs) for trajs in self.ctx.rollout(problems, G, purpose="rollout")]

    # -------------------------------------------------------------------- values
    def _device(self):
        return next(self.critic.unwrapped.head.parameters()).device

    def _values(self, prompts, completions) -> torch.Tensor:
        """``V(s_t)`` ``[B, C]`` of right-padded completions (padding positions arbitrary)."""
        rows = pad_rows(prompts, completions, self.ctx.tokenizer.pad_token_id, self._device())
        tokens = int(rows[1].sum() + rows[3].sum())
        if self.params.critic == "head":
            with torch.no_grad():  # the policy's trunk, no gradient into it
                features = state_hidden(self.ctx.model, *rows)
            self.critic.charge(tokens, grad=False)  # the trunk's forward
            return self.critic(features=features, tokens=0)
        return self.critic(*rows, tokens=tokens)

    def _placeholder_values(self, trunk: bool = True) -> torch.Tensor:
        """The critic on one pad token, not charged: a pass that only keeps the processes
        in step (``lockstep``). ``critic: head``: through the policy's trunk (``trunk``) or
        on zero features (the update's micro-batches, whose features are computed)."""
        pad = self.ctx.tokenizer.pad_token_id
        rows = pad_rows([[pad]], [[pad]], pad, self._device())
        if self.params.critic == "head":
            features = torch.zeros((1, 1, _hidden_size(self.ctx.model)), device=self._device())
            if trunk:
                with torch.no_grad():
                    features = state_hidden(self.ctx.model, *rows)
            return self.critic.module(features=features)
        return self.critic.module(*rows)

    def token_values(self, trajs: Sequence[Trajectory]) -> list[list[float]]:
        """``V(s_0) .. V(s_{n-1})`` of each trajectory from the current critic."""
        out: list[list[float]] = []
        size = self.ctx.run.train.micro_batch_size or max(len(trajs), 1)
        chunks = [trajs[s : s + size] for s in range(0, len(trajs), size)]
        self.critic.module.eval()
        with torch.no_grad():
            for part in lockstep(self.ctx.lockstep, chunks):
                if part is None:  # another process has more batches
                    self._placeholder_values()
                    continue
                v = self._values([t.prompt_ids for t in part], [t.completion_ids for t in part])
                v = v.float().cpu()
                out.extend(v[i, : len(t.completion_ids)].tolist() for i, t in enumerate(part))
        self.critic.module.train()
        return out

    def state_values(self, states: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[float]:
        """``V(s)`` of states ``(prompt_ids, prefix_ids)``: the value at the state's last
        token (diagnostics: the critic's ranking of next thoughts, its value error)."""
        pad = self.ctx.tokenizer.pad_token_id
        out: list[float] = []
        size = self.ctx.run.train.micro_batch_size or max(len(states), 1)
        self.critic.module.eval()
        with torch.no_grad():
            for s in range(0, len(states), size):
                part = states[s : s + size]
                # one placeholder token after the prefix: position len(prefix) is V(state)
                v = self._values([pr for pr, _ in part], [list(px) + [pad] for _, px in part])
                v = v.float().cpu()
                out.extend(float(v[i, len(px)]) for i, (_, px) in enumerate(part))
        self.critic.module.train()
        return out

    # -------------------------------------------------------------------- credit
    def collective(self):
        if not self.params.whiten_across_processes:
            return None
        return getattr(self.ctx, "collective", None)

    def advantages(self, groups: list[Group]) -> list[Trajectory]:
        p = self.params
        trajs = [t for g in groups for t in g.trajectories]
        values = self.token_values(trajs)
        per_token = []
        for t, v in zip(trajs, values, strict=True):
            if not t.completion_ids:
                raise ValueError("ppo: a completion with no token cannot be credited")
            adv, ret = gae(token_rewards(len(v), t.reward), v, p.gamma, p.lam)
            t.meta["values"], t.meta["returns"] = v, ret
            per_token.append(adv)
        if p.whiten:
            per_token = whiten(
                per_token,
                [t.loss_mask for t in trajs],
                std=p.whiten_std,
                eps=p.whiten_eps,
                collective=self.collective(),
            )
        return [t.set_credit(a) for t, a in zip(trajs, per_token, strict=True)]

    # -------------------------------------------------------------------- critic update
    def update(self, trained: list[Trajectory], step: int) -> dict[str, float]:
        """Train the critic on the step's trajectories (after the policy's update)."""
        p, t = self.params, self.ctx.run.train
        rows = [tr for tr in trained if "returns" in tr.meta]
        coll = self.ctx.lockstep  # several processes: every one takes every step
        if not rows and coll is None:
            return {}
        device = self._device()
        c = max((len(tr.completion_ids) for tr in rows), default=1)

        def padded(key: str) -> torch.Tensor:
            out = torch.zeros((len(rows), c), dtype=torch.float32)
            for i, tr in enumerate(rows):
                out[i, : len(tr.meta[key])] = torch.tensor(tr.meta[key], dtype=torch.float32)
            return out.to(device)

        old_values, returns = padded("values"), padded("returns")
        mask = torch.zeros((len(rows), c), dtype=torch.float32)
        for i, tr in enumerate(rows):
            m = [1.0] * len(tr.completion_ids) if tr.loss_mask is None else tr.loss_mask
            mask[i, : len(m)] = torch.tensor(m, dtype=torch.float32)
        mask = mask.to(device)
        features = None
        if p.critic == "head":  # the trunk as the policy's update left it
            features = []
            size = t.micro_batch_size or max(len(rows), 1)
            chunks = [rows[s : s + size] for s in range(0, len(rows), size)]
            for part in lockstep(coll, chunks):
                if part is None:  # another process has more: the trunk's forward, discarded
                    pad = self.ctx.tokenizer.pad_token_id
                    with torch.no_grad():
                        state_hidden(self.ctx.model, *pad_rows([[pad]], [[pad]], pad, device))
                    continue
                pr = pad_rows(
                    [x.prompt_ids for x in part],
                    [x.completion_ids for x in part],
                    self.ctx.tokenizer.pad_token_id,
                    device,
                )
                with torch.no_grad():
                    h = state_hidden(self.ctx.model, *pr)
                self.critic.charge(int(pr[1].sum() + pr[3].sum()), grad=False)
                features.append(torch.nn.functional.pad(h, (0, 0, 0, c - h.size(1))))
            features = (
                torch.cat(features)
                if features
                else torch.zeros((0, c, _hidden_size(self.ctx.model)), device=device)
            )
        world = 1 if coll is None else coll.world
        gen = torch.Generator().manual_seed(1_000_003 * self.ctx.seed + step)
        stats: dict[str, list[float]] = {}
        micro = t.micro_batch_size or max(len(rows), 1)
        for _ in range(self.epochs):
            order = torch.randperm(len(rows), generator=gen) if self.minibatches > 1 else None
            order = torch.arange(len(rows)) if order is None else order
            for mb in lockstep(coll, list(order.chunk(self.minibatches))):
                mb = [] if mb is None else mb.tolist()  # None: another process has more
                n_tokens = float(mask[mb].sum())
                if world > 1:
                    (n_tokens,) = coll.sum([n_tokens])
                total = 0.0
                for idx in lockstep(coll, [mb[s : s + micro] for s in range(0, len(mb), micro)]):
                    if idx is None:  # another process has more micro-batches: weight 0
                        v = self._placeholder_values(trunk=features is None)
                        self.critic.backward(v.sum() * 0.0)
                        continue
                    if features is not None:
                        n = int(mask[idx].sum())
                        v = self.critic(features=features[idx], tokens=n)
                    else:
                        part = [rows[i] for i in idx]
                        v = self._values(
                            [x.prompt_ids for x in part], [x.completion_ids for x in part]
                        )
                        v = torch.nn.functional.pad(v, (0, c - v.size(1)))
                    loss, st = value_loss(
                        v, old_values[idx], returns[idx], mask[idx], p.value_clip, n_tokens
                    )
                    self.critic.backward(loss * world if world > 1 else loss)
                    total += float(loss.detach())
                    for k, x in st.items():
                        stats.setdefault(k, []).append(x)
                norm = self.critic.step()
                stats.setdefault("loss", []).append(total)
                if norm is not None:
                    stats.setdefault("grad_norm", []).append(norm)
        out = {f"critic/{k}": sum(v) / len(v) for k, v in stats.items()}
        out["critic/lr"] = self.critic.scheduler.get_last_lr()[0]
        return out
