"""``creditbench plan``: GPU memory and GPU-hours of every job of an experiment, estimated
from its config before anything runs.

For each job (the warm start, every training run x seed, every evaluation job, as the
Snakemake DAG builds them) the estimate splits the memory of one GPU into

- ``weights``: the policy's weights in ``model.dtype`` (a second copy for the reference
  model of a full fine-tuning run with a KL term, ``loss.beta`` > 0; PPO's separate
  critic; LoRA adapters in float32, as peft keeps them);
- ``grads``: gradients of the trainable parameters (LoRA: the adapters only);
- ``optim``: AdamW's two moments in float32 per trainable parameter, plus a float32
  master copy of the weights for half-precision full fine-tuning (``MIXED_PRECISION_ADAM``:
  DeepSpeed and FSDP mixed precision keep half-precision weights and gradients beside the
  float32 master copy; the trainer without them keeps float32 weights and gradients and
  runs its forwards under autocast, ``creditbench.model.needs_master_weights``: the same
  16 bytes per parameter, split differently between the terms);
- ``act``: activations kept for the backward pass of one micro-batch
  (``train.micro_batch_size`` rows of ``prompt + sampling.max_new_tokens`` tokens), with
  or without gradient checkpointing (``train.gradient_checkpointing``), and the
  completion logits (the loss upcasts them to float32);
- ``kv``: the generation's KV cache. ``sampling.backend: hf``: the generation batch rows
  (``sampling.batch_size``, bounded by ``sampling.max_batch_tokens`` where set) x context
  x 2 (keys and values) x layers x kv heads x head_dim x bytes; ``vllm``: the engine's
  ``gpu_memory_utilization`` share of the GPU (its weights and KV cache).

``total`` = weights + grads + optim + the larger of the training phase (activations) and
the generation phase (KV cache; under ZeRO-3 / FSDP the gathered full weights too; a
vLLM engine that does not sleep holds its share through the update as well), plus
``OVERHEAD_GIB`` per GPU (CUDA context, allocator slack).

Sharding over ``launch.num_processes`` follows ``launch.accelerate_config``: DDP (the
default) replicates everything; DeepSpeed ZeRO-2 divides gradients and optimiser state
by the process count; ZeRO-3 and FSDP divide weights, gradients and optimiser state.

GPU-hours come from the budget: ``train.steps x prompts_per_step x group_size`` completions
of ``sampling.max_new_tokens`` tokens (an upper bound: every completion at the length
limit), times the method's generation factor (``generation_factor``: VinePPO's and SPO's
Monte Carlo continuations, SPO-tree's segments, SRPO's seeds, localisation and suffixes,
IBPO's revisions, OAR-P's perturbation passes), generated at a throughput per backend
that is an assumption (``THROUGHPUT_TOKENS_PER_S``, tokens/s of one GPU for a 1B-parameter
model, scaled by 1B / parameters; ``--hf-tokens-per-s``, ``--vllm-tokens-per-s``), plus
the update's ``6 x parameters x tokens`` FLOPs (2 for each no-grad scoring forward) at
``TRAIN_FLOPS_PER_S`` (an assumption: 30% of an H100's dense bf16 peak).

The architecture is read from ``model.path``'s ``config.json`` when it is a local folder;
a hub name is looked up in ``ARCHITECTURES`` (the published ``config.json`` values of the
models the paper configs use); any other model is refused with "architecture unknown:
give model.path a local folder".
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from creditbench.config import ConfigError, ExperimentConfig, RunConfig

GIB = 1024**3

# --------------------------------------------------------------------- assumptions
# Generation throughput of one GPU (H100-class) for a 1B-parameter model, in tokens/s,
# batched sampling at the config's batch size; scaled by 1e9 / parameters (decoding is
# bound by reading the weights). Assumptions, not measurements: benchmarks/gpu_check.sh
# prints the measured figures of a machine.
THROUGHPUT_TOKENS_PER_S = {"hf": 5_000.0, "vllm": 30_000.0}
# Training FLOPs per second of one GPU: 30% of an H100's dense bf16 peak (989 TFLOPs).
TRAIN_FLOPS_PER_S = 0.3 * 989e12
# Prompt tokens per row, by task (chat template and instruction included): an assumption
# (``--prompt-tokens`` overrides it).
PROMPT_TOKENS = {"chains": 32, "math": 256, "code": 512}
# Evaluation: problems per suite where ``eval.problems`` is null, and the generation
# budget where ``eval.max_gen_toks`` is null (the suites' own budgets vary).
EVAL_SUITE_PROBLEMS = 500
EVAL_GEN_TOKENS = 1024
# lm-eval's vLLM model takes this share of the GPU (where eval has no setting for it),
# and the hf model's batch where ``eval.batch_size`` is null or ``auto``.
LM_EVAL_VLLM_UTILIZATION = 0.9
EVAL_HF_BATCH = 64
# Thoughts per completion where a method needs the number (VinePPO's MC states, SPO-chain's
# cut points): an assumption.
THOUGHTS_PER_COMPLETION = 10
SPO_CUTPOINTS_PER_COMPLETION = 6
# see the module docstring
MIXED_PRECISION_ADAM = True
# CUDA context, allocator fragmentation and workspaces per GPU
OVERHEAD_GIB = 2.0

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# -------------------------------------------------------------------- architecture
@dataclass(frozen=True)
class Architecture:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    params: int  # total parameter count
    head_dim: int | None = None  # null: hidden_size / num_heads
    max_position_embeddings: int | None = None

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @classmethod
    def from_config(cls, cfg: dict) -> Architecture:
        """From a ``config.json``'s fields (Llama / Qwen / OLMo naming)."""
        h, n_layers = cfg["hidden_size"], cfg["num_hidden_layers"]
        heads = cfg["num_attention_heads"]
        kv = cfg.get("num_key_value_heads") or heads
        inter, vocab = cfg["intermediate_size"], cfg["vocab_size"]
        hd = cfg.get("head_dim") or h // heads
        tied = cfg.get("tie_word_embeddings", False)
        return cls(
            hidden_size=h,
            num_layers=n_layers,
            num_heads=heads,
            num_kv_heads=kv,
            intermediate_size=inter,
            vocab_size=vocab,
            params=count_params(h, n_layers, heads, kv, inter, vocab, hd, tied),
            head_dim=hd,
            max_position_embeddings=cfg.get("max_position_embeddings"),
        )


def count_params(h, layers, heads, kv, inter, vocab, head_dim=None, tied=False) -> int:
    """Parameters of a Llama-style decoder (biases and norms included approximately)."""
    hd = head_dim or h // heads
    attn = h * heads * hd * 2 + h * kv * hd * 2  # q, o; k, v
    mlp = 3 * h * inter  # gate, up, down
    per_layer = attn + mlp + 2 * h
    embed = vocab * h * (1 if tied else 2)
    return layers * per_layer + embed + h


# The published config.json values (hidden size, layers, heads, kv heads, intermediate
# size, vocabulary) and parameter counts of the models the paper configs use, for hub
# names that cannot be read offline. Keys are matched against the lower-cased name.
ARCHITECTURES: dict[str, Architecture] = {
    "qwen2.5-0.5b": Architecture(896, 24, 14, 2, 4864, 151936, 494_032_768, None, 32768),
    "qwen2.5-1.5b": Architecture(1536, 28, 12, 2, 8960, 151936, 1_543_714_304, None, 32768),
    "qwen2.5-7b": Architecture(3584, 28, 28, 4, 18944, 152064, 7_615_616_512, None, 32768),
    "qwen2.5-14b": Architecture(5120, 48, 40, 8, 13824, 152064, 14_770_033_664, None, 32768),
    "qwen3-32b": Architecture(5120, 64, 64, 8, 25600, 151936, 32_762_123_264, 128, 40960),
    # Qwen2.5-Math-1.5B's architecture, untied embeddings
    "r1-distill-qwen-1.5b": Architecture(
        1536, 28, 12, 2, 8960, 151936, 1_777_088_000, None, 131072
    ),
    # DeepSeekMath-7B (Llama architecture, multi-head attention)
    "deepseekmath-7b": Architecture(4096, 30, 32, 32, 11008, 102400, 6_910_365_696, None, 4096),
    # Rho-Math-1B (TinyLlama-1.1B architecture)
    "rho-1b": Architecture(2048, 22, 32, 4, 5632, 32000, 1_100_048_384, None, 2048),
    "rho-math-1b": Architecture(2048, 22, 32, 4, 5632, 32000, 1_100_048_384, None, 2048),
    "smollm2-135m": Architecture(576, 30, 9, 3, 1536, 49152, 134_515_008, None, 8192),
    # OLMo-3-7B (Instruct): transformers' Olmo3Config, documented against the checkpoint
    # allenai/Olmo-3-7B-Instruct (hidden 4096, 32 layers, 32 heads, multi-head attention,
    # intermediate 11008); the dolma2 tokenizer's padded vocabulary (100352, as OLMo-2's
    # configs); a 65536-token window. Three of its four layers attend over a 4096-token
    # sliding window, which this table does not model: its KV cache estimate is an upper
    # bound for contexts over 4096 tokens.
    "olmo-3-7b": Architecture(4096, 32, 32, 32, 11008, 100352, 7_298_355_200, None, 65536),
}


class UnknownArchitecture(ConfigError):
    pass


def architecture(cfg: ExperimentConfig) -> Architecture:
    """The policy's architecture: the tiny testbed model, a local config.json, or the table."""
    path = cfg.model.path
    if path is None:
        from creditbench.tasks import make_task

        t = cfg.model.tiny
        try:
            vocab = len(make_task(cfg.task).alphabet) + 4  # characters and pad/bos/eos/unk
        except Exception:  # noqa: BLE001 - a task without an alphabet: a small vocabulary
            vocab = 64
        # hidden, layers, heads, kv heads (full multi-head attention), intermediate, vocab
        shape = (t.hidden_size, t.num_layers, t.num_heads, t.num_heads, t.intermediate_size, vocab)
        return Architecture(
            *shape, count_params(*shape, tied=True), None, t.max_position_embeddings
        )
    local = Path(path).expanduser()
    if (local / "config.json").is_file():
        return Architecture.from_config(json.loads((local / "config.json").read_text()))
    name = local.name.lower()
    for key in sorted(ARCHITECTURES, key=len, reverse=True):
        if re.search(rf"(^|[^a-z0-9.]){re.escape(key)}($|[^0-9.])", name):
            return ARCHITECTURES[key]
    raise UnknownArchitecture(
        f"model.path {path!r}: architecture unknown: give model.path a local folder "
        "(with its config.json)"
    )


def lora_params(arch: Architecture, r: int, targets) -> int:
    """Adapter parameters: ``r x (in + out)`` per targeted linear layer (``all-linear``:
    every projection of every block, not the output head)."""
    h, hd, inter = arch.hidden_size, arch.dim, arch.intermediate_size
    shapes = {
        "q_proj": (h, arch.num_heads * hd),
        "k_proj": (h, arch.num_kv_heads * hd),
        "v_proj": (h, arch.num_kv_heads * hd),
        "o_proj": (arch.num_heads * hd, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
    }
    names = shapes if targets == "all-linear" else [n for n in shapes if n in set(targets)]
    return arch.num_layers * sum(r * sum(shapes[n]) for n in names)


# ------------------------------------------------------------------------ sharding
def sharding(cfg: ExperimentConfig) -> str:
    """``ddp``, ``zero2`` or ``zero3`` (ZeRO-3 and FSDP shard alike)."""
    if cfg.launch.num_processes == 1:
        return "ddp"
    name = (cfg.launch.accelerate_config or "ddp").lower()
    if "zero3" in name or "zero_3" in name or "fsdp" in name:
        return "zero3"
    if "zero2" in name or "zero_2" in name or "zero1" in name:
        return "zero2"
    path = Path(name).expanduser()
    if path.is_file():  # a user's own accelerate config file
        text = path.read_text()
        if "FSDP" in text or re.search(r"zero_stage:\s*3", text):
            return "zero3"
        if re.search(r"zero_stage:\s*[12]", text):
            return "zero2"
    return "ddp"


# ------------------------------------------------------------------------ estimates
@dataclass
class Estimate:
    """One job's estimate per GPU (bytes) and its GPU-hours."""

    job: str
    kind: str
    gpus: int
    weights: float = 0.0
    grads: float = 0.0
    optim: float = 0.0
    act: float = 0.0
    act_no_ckpt: float = 0.0  # activations without gradient checkpointing
    act_ckpt: float = 0.0  # with it
    kv: float = 0.0
    gen_extra: float = 0.0  # gathered ZeRO-3 weights / a vLLM engine awake in the update
    overlap: bool = False  # generation memory held through the update as well
    gpu_hours: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        resident = self.weights + self.grads + self.optim + OVERHEAD_GIB * GIB
        gen = self.kv + self.gen_extra
        return resident + (self.act + gen if self.overlap else max(self.act, gen))

    def terms(self) -> dict[str, float]:
        return {
            "weights": self.weights,
            "gradients": self.grads,
            "optimiser state": self.optim,
            "activations": self.act,
            "KV cache": self.kv + self.gen_extra,
        }


@dataclass
class Assumptions:
    prompt_tokens: int | None = None  # null: PROMPT_TOKENS by task
    hf_tokens_per_s: float = THROUGHPUT_TOKENS_PER_S["hf"]
    vllm_tokens_per_s: float = THROUGHPUT_TOKENS_PER_S["vllm"]
    train_flops_per_s: float = TRAIN_FLOPS_PER_S
    gpu_gib: float = 80.0  # memory of one GPU (the vLLM shares are of this)

    @property
    def gpu_bytes(self) -> float:
        return self.gpu_gib * GIB

    def prompt(self, cfg_or_run) -> int:
        if self.prompt_tokens is not None:
            return self.prompt_tokens
        return PROMPT_TOKENS.get(cfg_or_run.task.name, 256)

    def tokens_per_s(self, backend: str, params: int) -> float:
        base = self.vllm_tokens_per_s if backend == "vllm" else self.hf_tokens_per_s
        return base * 1e9 / max(params, 1)


def activation_bytes(
    arch: Architecture, rows: int, row_tokens: int, completion_tokens: int, nbytes: int, ckpt: bool
) -> float:
    """Activations kept for the backward pass of ``rows`` sequences of ``row_tokens``.

    Per token and block, without checkpointing (attention through SDPA / flash attention,
    so no sequence-squared score matrix): the block's input, two norm outputs, the
    residual, q/k/v (also after rotary), the attention output, the MLP's gate, up, act
    and product: about ``8 h + 4 kv_heads x head_dim + 4 intermediate`` values. With
    checkpointing: every block's input, plus one block's activations recomputed in
    backward. Plus the completion logits: the model's dtype and a float32 log-softmax.
    """
    tokens = rows * row_tokens
    kvd = arch.num_kv_heads * arch.dim
    per_block = (8 * arch.hidden_size + 4 * kvd + 4 * arch.intermediate_size) * nbytes
    if ckpt:
        blocks = arch.num_layers * arch.hidden_size * nbytes + per_block
    else:
        blocks = arch.num_layers * per_block
    logits = rows * (completion_tokens + 1) * arch.vocab_size * (nbytes + 4)
    return tokens * blocks + logits


def kv_cache_bytes(arch: Architecture, rows: int, context: int, nbytes: int) -> float:
    return rows * context * 2 * arch.num_layers * arch.num_kv_heads * arch.dim * nbytes


def generation_rows(sampling, context: int) -> int:
    rows = sampling.batch_size
    max_tokens = getattr(sampling, "max_batch_tokens", None)
    if max_tokens:
        rows = max(1, min(rows, max_tokens // max(context, 1)))
    return rows


def generation_factor(run: RunConfig, prompt_tokens: int) -> tuple[float, str]:
    """Generated tokens of a step over ``prompts x group_size x max_new_tokens``, with
    what the factor assumes."""
    p, t, s = run.params, run.train, run.sampling
    n, new = t.group_size, s.max_new_tokens
    if run.method == "vineppo":
        states = THOUGHTS_PER_COMPLETION
        if p.get("max_value_steps") is not None:
            states = min(states, p["max_value_steps"])
        # K continuations from each state, on average half a completion long
        k = p.get("mc_rollouts", 9)
        return 1 + k * states * 0.5, f"VinePPO: K={k} x {states} states x half a completion"
    if run.method == "spo":
        if p.get("variant") == "tree":
            bf = p.get("branch_factors", [6, 6, 6])
            seg = p.get("segment_tokens", 600)
            nodes, width = 0, 1
            for b in bf:
                width *= b
                nodes += width
            return nodes * seg / (n * new), f"SPO-tree: {nodes} segments of {seg} tokens"
        k = p.get("mc_rollouts", 9)
        cuts = SPO_CUTPOINTS_PER_COMPLETION
        return 1 + k * cuts * 0.5, f"SPO-chain: K={k} x {cuts} cut points x half a completion"
    if run.method == "srpo":
        seeds, suffixes = (int(x) for x in str(p.get("split", "1x4")).split("x"))
        base = max(n - seeds * suffixes, 0)
        loc = seeds if p.get("reset", "self") == "self" else 0
        chains = base + seeds + loc + seeds * suffixes * 0.5
        return chains / n, "SRPO: base + seeds + localisation + suffixes of half a completion"
    if run.method == "ibpo":
        return 2.0, "IBPO: a revision per completion (upper bound)"
    if run.method == "oar":
        if p.get("importance") == "perturbation":
            return 5.0, "OAR-P: about 5x GRPO's cost (the paper's ratio)"
        return 1.1, "OAR-G: about 1.1x GRPO's cost (the paper's ratio)"
    return 1.0, ""


def _params_breakdown(arch: Architecture, model_cfg) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    n = arch.params
    if model_cfg.lora is None:
        return n, n
    return n, lora_params(arch, model_cfg.lora.r, model_cfg.lora.target_modules)


def _state(est: Estimate, arch, model_cfg, shard: str, world: int, copies: float = 1.0):
    """Weights, gradients and optimiser state of one trained model, per GPU."""
    nbytes = _BYTES[model_cfg.dtype]
    n, trainable = _params_breakdown(arch, model_cfg)
    w_div = world if shard == "zero3" else 1
    s_div = world if shard in ("zero2", "zero3") else 1
    if model_cfg.lora is None:
        est.weights += copies * n * nbytes / w_div
        est.grads += copies * n * nbytes / s_div
        master = 4 if (nbytes < 4 and MIXED_PRECISION_ADAM) else 0
        est.optim += copies * n * (8 + master) / s_div
    else:  # frozen base in dtype, float32 adapters with float32 gradients and moments
        est.weights += copies * (n * nbytes / w_div + trainable * 4 / w_div)
        est.grads += copies * trainable * 4 / s_div
        est.optim += copies * trainable * 8 / s_div


def train_estimate(
    cfg: ExperimentConfig, run: RunConfig, seed: int, arch: Architecture, a: Assumptions
) -> Estimate:
    world = cfg.launch.num_processes
    shard = sharding(cfg)
    nbytes = _BYTES[run.model.dtype]
    s, t = run.sampling, run.train
    est = Estimate(f"train {run.name} seed{seed}", "train", world)
    _state(est, arch, run.model, shard, world)
    n_all, trainable = _params_breakdown(arch, run.model)
    critic = run.method == "ppo" and run.params.get("critic", "separate") == "separate"
    if critic:  # a second model with its own optimiser
        _state(est, arch, run.model, shard, world)
        est.notes.append("PPO critic: a second model and optimiser")
    if run.loss.beta > 0 and run.model.lora is None:  # a frozen reference copy, unsharded
        est.weights += n_all * nbytes
        est.notes.append("reference model")
    prompt = a.prompt(run)
    row = prompt + s.max_new_tokens
    rows_per_minibatch = max(1, t.prompts_per_step * t.group_size // (t.minibatches * world))
    mb = t.micro_batch_size or rows_per_minibatch
    ckpt = bool(getattr(t, "gradient_checkpointing", False))
    est.act_no_ckpt = activation_bytes(arch, mb, row, s.max_new_tokens, nbytes, False)
    est.act_ckpt = activation_bytes(arch, mb, row, s.max_new_tokens, nbytes, True)
    est.act = est.act_ckpt if ckpt else est.act_no_ckpt
    if critic:  # the critic's backward on the same micro-batch (no logits: a value head)
        per = activation_bytes(arch, mb, row, 0, nbytes, ckpt)
        est.act += per - mb * arch.vocab_size * (nbytes + 4)
    context = row
    if run.method in ("vineppo", "spo"):
        extra = run.params.get("value_max_new_tokens") or s.max_new_tokens
        context = run.params.get("value_context") or row + extra
    # generation
    if s.backend == "vllm":
        est.kv = s.vllm.gpu_memory_utilization * a.gpu_bytes
        sleep = s.vllm.sleep
        est.overlap = sleep is False
        est.notes.append(f"vLLM share {s.vllm.gpu_memory_utilization:g}")
    else:
        rows = generation_rows(s, context)
        est.kv = kv_cache_bytes(arch, rows, context, nbytes)
        est.notes.append(f"{rows} gen rows x {context} tokens")
        if shard == "zero3":  # generation gathers the sharded weights
            est.gen_extra = n_all * nbytes * (1 - 1 / world)
    # compute
    factor, why = generation_factor(run, prompt)
    if why:
        est.notes.append(f"gen x{factor:.1f}")
    completions = t.steps * t.prompts_per_step * t.group_size
    gen_tokens = completions * s.max_new_tokens * factor
    gen_s = gen_tokens / a.tokens_per_s(s.backend, n_all)
    train_tokens = completions * row
    flops = 6 * n_all * train_tokens * t.epochs
    scoring = (1 if t.epochs * t.minibatches > 1 else 0) + (1 if run.loss.beta > 0 else 0)
    flops += 2 * n_all * train_tokens * scoring
    if critic:
        flops += 6 * n_all * train_tokens * t.epochs + 2 * n_all * train_tokens
    if run.method == "oar" and run.params.get("importance") == "gradient":
        flops += 6 * n_all * train_tokens  # the gradient importance pass
    if ckpt:  # the forward recomputed in the backward: about a third more per update
        flops *= 4 / 3
    est.gpu_hours = (gen_s + flops / a.train_flops_per_s) / 3600
    return est


def warmstart_estimate(cfg: ExperimentConfig, arch: Architecture, a: Assumptions) -> Estimate:
    """The warm start: supervised training when it has steps, and the base model's record
    (greedy and sampled generation) in every case."""
    ws = cfg.warm_start
    nbytes = _BYTES[cfg.model.dtype]
    est = Estimate("warmstart", "warmstart", 1)
    run = cfg.run(next(iter(cfg.runs)))
    prompt = a.prompt(cfg)
    context = prompt + run.sampling.max_new_tokens
    n = arch.params
    trains = ws.steps + ws.skill_steps > 0
    if trains:
        _state(est, arch, cfg.model.model_copy(update={"lora": None}), "ddp", 1)
        est.act = activation_bytes(arch, ws.batch_size, context, context, nbytes, False)
        est.act_no_ckpt = est.act
        est.act_ckpt = activation_bytes(arch, ws.batch_size, context, context, nbytes, True)
    else:
        est.weights = n * nbytes
        est.notes.append("inference only (warm_start.steps 0)")
    rows = generation_rows(run.sampling, context)
    est.kv = kv_cache_bytes(arch, rows, context, nbytes)
    samples = ws.eval_problems * (1 + 8)  # greedy and 8 samples (the record), an estimate
    gen_s = samples * run.sampling.max_new_tokens / a.tokens_per_s("hf", n)
    flops = 6 * n * (ws.steps + ws.skill_steps) * ws.batch_size * context
    est.gpu_hours = (gen_s + flops / a.train_flops_per_s) / 3600
    return est


def eval_estimates(cfg: ExperimentConfig, arch: Architecture, a: Assumptions) -> list[Estimate]:
    """One estimate per evaluation job, grouped as the workflow groups them."""
    from creditbench.cli import suites_of

    ev = cfg.eval
    suites = suites_of(cfg)
    nbytes = _BYTES[cfg.model.dtype]
    gen = ev.max_gen_toks or EVAL_GEN_TOKENS
    context = ev.max_length or a.prompt(cfg) + gen
    n = arch.params
    jobs: list[tuple[str, list[str], int]] = []
    for run in cfg.runs:
        seed_groups = (
            [("seeds", len(cfg.seeds))] if ev.group_seeds else [(f"seed{s}", 1) for s in cfg.seeds]
        )
        for seed_name, n_seeds in seed_groups:
            if ev.group_suites:
                jobs.append((f"evaluate {run} {seed_name} all", suites, n_seeds))
            else:
                jobs += [(f"evaluate {run} {seed_name} {s}", [s], n_seeds) for s in suites]
    out = []
    vllm = ev.lm_eval_model == "vllm"
    tp = getattr(ev, "vllm_tensor_parallel_size", 1) if vllm else 1
    dp = getattr(ev, "vllm_data_parallel_size", 1) if vllm else 1
    share = getattr(ev, "vllm_gpu_memory_utilization", LM_EVAL_VLLM_UTILIZATION)
    batch = ev.batch_size if isinstance(ev.batch_size, int) else EVAL_HF_BATCH
    for name, job_suites, n_seeds in jobs:
        est = Estimate(name, "evaluate", tp * dp, weights=n * nbytes / tp)
        if vllm:
            est.kv = max(share * a.gpu_bytes - est.weights, 0.0)
            est.notes.append(f"lm-eval vLLM share {share:g}")
        else:
            est.kv = kv_cache_bytes(arch, batch, context, nbytes)
            est.notes.append(f"{batch} rows x {context} tokens")
        problems = ev.problems or EVAL_SUITE_PROBLEMS
        tokens = n_seeds * len(job_suites) * problems * ev.samples * gen
        est.gpu_hours = tokens / a.tokens_per_s(ev.lm_eval_model, n) / 3600
        out.append(est)
    return out


def plan(cfg: ExperimentConfig, a: Assumptions) -> list[Estimate]:
    """Every job's estimate: the warm start, each run x seed, each evaluation job."""
    arch = architecture(cfg)
    rows = [warmstart_estimate(cfg, arch, a)]
    for name in cfg.runs:
        run = cfg.run(name)
        rows += [train_estimate(cfg, run, seed, arch, a) for seed in cfg.seeds]
    rows += eval_estimates(cfg, arch, a)
    return rows


# -------------------------------------------------------------------------- output
def _gib(x: float) -> str:
    g = x / GIB
    return f"{g:.1f}" if g >= 0.1 or g == 0 else f"{g:.3f}"


def format_table(rows: list[Estimate]) -> str:
    head = [
        "job",
        "gpus",
        "weights",
        "grads",
        "optim",
        "act",
        "act(no ckpt)",
        "act(ckpt)",
        "kv cache",
        "total GiB",
        "GPU-h",
        "notes",
    ]
    body = []
    for r in rows:
        body.append(
            [
                r.job,
                str(r.gpus),
                _gib(r.weights),
                _gib(r.grads),
                _gib(r.optim),
                _gib(r.act),
                _gib(r.act_no_ckpt) if r.kind != "evaluate" else "-",
                _gib(r.act_ckpt) if r.kind != "evaluate" else "-",
                _gib(r.kv + r.gen_extra),
                _gib(r.total),
                f"{r.gpu_hours:.2f}",
                "; ".join(r.notes),
            ]
        )
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells):
        return "  ".join(
            c.ljust(w) if i in (0, len(cells) - 1) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


_ADVICE = {
    "activations": "set train.gradient_checkpointing: true or a smaller train.micro_batch_size",
    "KV cache": "bound the generation batch with sampling.max_batch_tokens (or a smaller "
    "sampling.batch_size; vllm: a smaller sampling.vllm.gpu_memory_utilization)",
    "weights": "shard over more processes with ZeRO-3 / FSDP (launch.num_processes, "
    "launch.accelerate_config: deepspeed_zero3) or use LoRA (model.lora)",
    "gradients": "shard over more processes (ZeRO-2 / ZeRO-3: launch.num_processes, "
    "launch.accelerate_config) or use LoRA (model.lora)",
    "optimiser state": "shard over more processes (ZeRO-2 / ZeRO-3: launch.num_processes, "
    "launch.accelerate_config) or use LoRA (model.lora)",
}


def too_big(rows: list[Estimate], gpu_gib: float) -> list[str]:
    """One message per job whose estimate exceeds the GPU: the job, the biggest term,
    what to change."""
    out = []
    for r in rows:
        if r.total <= gpu_gib * GIB:
            continue
        term, value = max(r.terms().items(), key=lambda kv: kv[1])
        advice = _ADVICE[term]
        if r.kind == "evaluate":
            advice = (
                "a smaller eval.batch_size or eval.max_gen_toks, or eval.lm_eval_model: vllm "
                "(its share of the GPU, across GPUs with eval.vllm_tensor_parallel_size)"
            )
        out.append(
            f"{r.job}: needs about {_gib(r.total)} GiB per GPU, more than {gpu_gib:g} GiB; "
            f"the biggest term is {term} ({_gib(value)} GiB): {advice}"
        )
    return out


def header(cfg: ExperimentConfig, a: Assumptions) -> str:
    arch = architecture(cfg)
    run = cfg.run(next(iter(cfg.runs)))
    return (
        f"experiment {cfg.experiment}: model {cfg.model.path or 'tiny testbed model'} "
        f"({arch.params / 1e9:.2f} B parameters, {arch.num_layers} layers, hidden "
        f"{arch.hidden_size}, {arch.num_kv_heads} kv heads x {arch.dim}), {cfg.model.dtype}"
        f"{', LoRA r=' + str(cfg.model.lora.r) if cfg.model.lora else ', full fine-tuning'}; "
        f"{cfg.launch.num_processes} process(es), {sharding(cfg)}; GPU {a.gpu_gib:g} GiB\n"
        f"assumptions: {a.prompt(cfg)} prompt tokens; completions at the length limit; "
        f"generation {a.hf_tokens_per_s:g} (hf) / {a.vllm_tokens_per_s:g} (vllm) tokens/s "
        f"per GPU at 1B parameters, scaled by 1B/parameters; training "
        f"{a.train_flops_per_s / 1e12:.0f} TFLOP/s per GPU; {OVERHEAD_GIB:g} GiB overhead "
        f"per GPU; sampling backend {run.sampling.backend}"
    )


def summary(rows: list[Estimate]) -> str:
    by: dict[str, float] = {}
    for r in rows:
        by[r.kind] = by.get(r.kind, 0.0) + r.gpu_hours
    parts = ", ".join(f"{k} {v:.1f}" for k, v in by.items())
    return f"GPU-hours: {parts}; total {sum(by.values()):.1f}"


def report(cfg: ExperimentConfig, a: Assumptions) -> tuple[str, list[str]]:
    """The printed plan (header, table, GPU-hours) and the jobs that do not fit."""
    rows = plan(cfg, a)
    text = "\n".join([header(cfg, a), "", format_table(rows), "", summary(rows)])
    return text, too_big(rows, a.gpu_gib)
