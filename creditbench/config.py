"""Typed experiment and run configuration.

An experiment YAML holds shared settings (task, model, warm start, sampling,
training, loss, evaluation) and a ``runs`` table; each run names a method and may
override any shared section. Everything is validated when the file is loaded, before
any work starts, and every error names the key, the value and what is allowed.

Precedence for a run's ``loss`` and ``train`` sections (later wins):
engine defaults < the method's paper defaults (``DEFAULTS`` in its file)
< the experiment's section < the run's own section.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(gt=0, le=1)]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key, value and what is allowed."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- task
class ChainsTaskConfig(Strict):
    """The synthetic testbed: modular arithmetic chains, one thought per line."""

    name: Literal["chains"] = "chains"
    min_len: PositiveInt = 3
    max_len: PositiveInt = 6
    ops: list[Literal["+", "-", "*"]] = ["+", "-", "*"]
    modulus: Annotated[int, Field(ge=2, le=1000)] = 100
    operand_max: Annotated[int, Field(ge=1, le=99)] = 9
    long_min_len: PositiveInt = 8
    long_max_len: PositiveInt = 8
    n_train: PositiveInt = 20000
    n_test: PositiveInt = 500
    data_seed: int = 1234
    # [choice] how a localisation answer names the first wrong thought: ``review``
    # goes through the numbered thoughts up to it, each as the value it wrote and the
    # step redone (``1|12=7+5=12``, ``2|35=12*3=36``: the first whose values differ is
    # named), so the skill is reading a line and redoing a step; ``verdicts`` gives a
    # mark per thought (``1+2-``); ``index`` the number alone (``2``), as SRPO's math
    # prompt asks, which a small model does not learn (benchmarks/pilot_localisation.py).
    # The parser reads any of them
    localisation_answer: Literal["review", "verdicts", "index"] = "review"
    # [choice] repaired demonstrations (warm_start.demo_repair_rate) repair their slip
    # after up to this many carried lines (uniform; 0: in the next thought); the oracle
    # accepts a repair of the pending slip at any distance
    repair_max_delay: Annotated[int, Field(ge=0)] = 8

    @model_validator(mode="after")
    def _lengths(self) -> ChainsTaskConfig:
        if self.min_len > self.max_len:
            raise ValueError(f"min_len ({self.min_len}) must be <= max_len ({self.max_len})")
        if self.long_min_len > self.long_max_len:
            raise ValueError(
                f"long_min_len ({self.long_min_len}) must be <= long_max_len ({self.long_max_len})"
            )
        if not self.ops:
            raise ValueError("ops must name at least one of '+', '-', '*'")
        return self


_DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
_HUB_DATASET = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # org/name


class MathDataConfig(Strict):
    """One split's problems: a hub dataset (``source: openai/gsm8k``, ``config: main``,
    ``split: train``) or a local ``.jsonl`` / ``.json`` / ``.parquet`` file (one split;
    ``config`` and ``split`` are then ignored), read with ``datasets``.

    ``answer_format``: how the gold answer is read from ``answer_field``: ``final`` (the
    field is the answer), ``boxed`` (a solution's last ``\\boxed{}``, MATH), ``gsm8k``
    (a solution's ``#### n`` line), ``auto`` (``####`` if present, else ``\\boxed{}``,
    else the whole field). ``limit``: a random subsample of this many problems, drawn
    with ``subsample_seed``; ``id_field``: the record's id (default: its index).
    """

    source: Annotated[str, Field(min_length=1)]
    config: str | None = None
    split: str = "train"
    question_field: str = "question"
    answer_field: str = "answer"
    answer_format: Literal["auto", "final", "boxed", "gsm8k"] = "auto"
    id_field: str | None = None
    limit: PositiveInt | None = None
    subsample_seed: int = 0

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v.lower().endswith(_DATA_SUFFIXES) or _HUB_DATASET.match(v):
            return v
        raise ValueError(
            f"data source {v!r} is neither a local {'/'.join(_DATA_SUFFIXES)} file "
            f"nor a hub dataset id ('org/name')"
        )


# SRPO: a thought ends with the stop pattern the model emits (kept in the text)
_STOP_TEMPLATE = (
    "{question}\n\nSolve the problem step by step. End every step with </thought>. "
    "Put your final answer within \\boxed{}."
)
# the usual MATH / GSM8K instruction (Qwen2.5-Math, DeepSeekMath)
_PLAIN_TEMPLATE = (
    "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
)


class MathTaskConfig(Strict):
    """Math problems from a hub dataset or a local file; answers checked with math-verify.

    ``train`` / ``test``: where each split's problems come from (``MathDataConfig``).
    ``prompt_template``: the user message, ``{question}`` replaced by the problem (other
    braces are literal, so LaTeX needs no escaping); default per segmenter (``stop``: ask
    for ``</thought>`` after every step; otherwise the usual step-by-step / ``\\boxed{}``
    instruction). ``system_prompt``: an optional system message.
    ``segmenter``: how a completion splits into thoughts (methods/README.md, Thoughts):
    ``stop`` (SRPO: a thought ends with ``stop_pattern``, kept), ``lines`` (VinePPO GSM8K:
    one line per thought, the final answer line joins the last one), ``sentences``
    (VinePPO MATH: lines and sentence ends, pieces shorter than ``min_thought_chars``
    merged). ``max_thoughts``: the thought cap (later text joins the last thought);
    default 20 for ``stop`` (SRPO), none otherwise. ``suite``: the name of the local
    evaluation suite on the test split.
    With ``segmenter: stop`` chains are generated thought by thought, as SRPO's agent
    loop generates them (``creditbench.thoughts``): a thought ends at ``stop_pattern`` or
    after ``max_thought_tokens`` tokens (SRPO code: 256), a thought starts only while a
    whole one still fits the response length, and the chain ends after ``max_thoughts``
    thoughts or after the thought that contains ``answer_marker`` (``\\boxed{``).
    ``stop_strings``: extra strings that end any rollout (VinePPO's SFT checkpoints stop
    at ``"\\n\\n\\nProblem:"``, kept in the output).
    ``chat_template``: wrap prompts in the tokenizer's chat template (instruct models);
    false gives the prompt text as is, for SFT checkpoints trained on plain prompts
    (VinePPO's). ``completion_answer``: where a completion states its answer: its last
    ``\\boxed{}``, or a ``#### n`` line (GSM8K-style SFT checkpoints).
    """

    name: Literal["math"]
    train: MathDataConfig
    test: MathDataConfig
    suite: Annotated[str, Field(pattern=r"^[\w.-]+$")] = "math_test"
    prompt_template: str | None = None
    system_prompt: str | None = None
    segmenter: Literal["stop", "lines", "sentences"] = "stop"
    stop_pattern: Annotated[str, Field(min_length=1)] = "</thought>"
    max_thoughts: PositiveInt | None = None
    max_thought_tokens: PositiveInt | None = 256
    answer_marker: str | None = "\\boxed{"
    stop_strings: list[Annotated[str, Field(min_length=1)]] = []
    min_thought_chars: NonNegInt = 20
    chat_template: bool = True
    completion_answer: Literal["boxed", "gsm8k"] = "boxed"

    @model_validator(mode="before")
    @classmethod
    def _segmenter_defaults(cls, data: Any) -> Any:
        """Fill the per-segmenter defaults, so a dumped config shows what was used."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        stop = data.get("segmenter", "stop") == "stop"
        if data.get("prompt_template") is None:
            data["prompt_template"] = _STOP_TEMPLATE if stop else _PLAIN_TEMPLATE
        if "max_thoughts" not in data and stop:
            data["max_thoughts"] = 20
        return data

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None and v.count("{question}") != 1:
            raise ValueError(f"prompt_template must contain '{{question}}' exactly once, got {v!r}")
        return v


class CodeTaskConfig(Strict):
    """Programming problems with tests; the reward runs the program in the sandbox.

    ``train`` / ``test``: where each split's problems come from (``CodeData``): records in
    the MBPP format (``text`` or ``prompt``, ``code``, ``test_list``, ``test_setup_code``
    or ``test_imports``) or the HumanEval format (``prompt``, ``canonical_solution``,
    ``test``, ``entry_point``), told apart per record.
    ``prompt_template``: the user message per format; ``{problem}`` is replaced by the
    MBPP task text or the HumanEval function prompt, ``{tests}`` by MBPP's asserts (one
    per line; empty for HumanEval) and ``{entry_point}`` by the function under test
    (other braces are literal). A format left out keeps its default, the prompt of the
    ``cb_mbpp`` / ``cb_humaneval`` evaluation suites. ``system_prompt``: an optional
    system message. ``timeout_s`` / ``memory_mb``: the sandbox's wall-clock and memory
    limits for one program with its tests. ``max_thoughts``: the thought cap (a thought
    is a line; later lines join the last thought); none by default. ``suite``: the name
    of the local evaluation suite on the test split.
    """

    class CodeData(Strict):
        """One split's problems: a hub dataset (``source: google-research-datasets/mbpp``,
        ``config: full``, ``split: train``) or a local ``.jsonl`` / ``.json`` /
        ``.parquet`` file (``.jsonl.gz`` / ``.json.gz`` too; one split: ``config`` and
        ``split`` are then ignored). ``limit``: a random subsample of this many problems,
        drawn with ``subsample_seed``.
        """

        source: Annotated[str, Field(min_length=1)]
        config: str | None = None
        split: str = "train"
        limit: PositiveInt | None = None
        subsample_seed: int = 0

        @field_validator("source")
        @classmethod
        def _source(cls, v: str) -> str:
            suffixes = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")
            if v.lower().endswith(suffixes) or re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", v):
                return v
            raise ValueError(
                f"data source {v!r} is neither a local {'/'.join(suffixes)} file "
                "nor a hub dataset id ('org/name')"
            )

    name: Literal["code"]
    train: CodeData
    test: CodeData
    suite: Annotated[str, Field(pattern=r"^[\w.-]+$")] = "code_test"
    prompt_template: dict[Literal["mbpp", "humaneval"], str] = {
        "mbpp": (
            "You are an expert Python programmer, and here is your task: {problem} Your code "
            "should pass these tests:\n\n{tests}\n\nWrite the function in Python, in a single "
            "```python code block."
        ),
        "humaneval": (
            "Complete the following Python function. Write the whole function (its signature, "
            "body and any imports it needs) in a single ```python code block.\n\n"
            "```python\n{problem}\n```"
        ),
    }
    system_prompt: str | None = None
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    memory_mb: Annotated[int, Field(ge=64)] = 1024
    max_thoughts: PositiveInt | None = None

    @field_validator("prompt_template", mode="before")
    @classmethod
    def _templates(cls, v: Any) -> Any:
        """A format left out keeps its default; every template must show ``{problem}``."""
        if not isinstance(v, dict):
            return v
        merged = {**cls.model_fields["prompt_template"].default, **v}
        for fmt, template in merged.items():
            if isinstance(template, str) and "{problem}" not in template:
                raise ValueError(f"prompt_template.{fmt} must contain '{{problem}}'")
        return merged


_TASK_TAGS = ("chains", "math", "code")


def _task_name(v: Any) -> str:
    return v.get("name", "chains") if isinstance(v, dict) else getattr(v, "name", "chains")


# a task section is told apart by its ``name``; a section without one is the testbed
TaskConfig = Annotated[
    Annotated[ChainsTaskConfig, Tag("chains")]
    | Annotated[MathTaskConfig, Tag("math")]
    | Annotated[CodeTaskConfig, Tag("code")],
    Discriminator(_task_name),
]


# -------------------------------------------------------------------------- model
class TinyModelConfig(Strict):
    """A small Llama-style model built from scratch with a character-level tokenizer."""

    hidden_size: PositiveInt = 128
    num_layers: PositiveInt = 4
    num_heads: PositiveInt = 4
    intermediate_size: PositiveInt = 384
    max_position_embeddings: PositiveInt = 512
    init_seed: int = 0

    @model_validator(mode="after")
    def _heads(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        return self


class LoraConfig(Strict):
    r: PositiveInt = 64
    alpha: PositiveInt = 128
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelConfig(Strict):
    """``path``: a local directory, a hub id, or a local ``.gguf`` file (converted once into
    a cached ``save_pretrained`` directory); ``null`` builds the tiny testbed model."""

    path: str | None = None
    tiny: TinyModelConfig = TinyModelConfig()
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    lora: LoraConfig | None = None

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: str | None) -> str | None:
        if v is None:
            return v
        p = Path(v).expanduser()
        if v.lower().endswith(".gguf"):  # a GGUF file, converted once on load (model.py)
            if not p.is_file():
                raise ValueError(f"GGUF model file {v!r} does not exist")
            return v
        if p.exists():
            if not (p / "config.json").is_file():
                raise ValueError(f"model directory {v!r} has no config.json")
            return v
        looks_local = v.startswith((".", "/", "~")) or v.count("/") != 1
        if looks_local or not _HUB_ID.match(v):
            raise ValueError(
                f"model path {v!r} does not exist (give a local directory or a hub id 'org/name')"
            )
        return v


# --------------------------------------------------------------------- warm start
class WarmStartConfig(Strict):
    """Supervised warm start: the solution format first, then the prompted skills with replay.

    ``skills``: what the second phase teaches on corrupted traces (``localisation``:
    name the first wrong thought, SRPO; ``revision``: compare-and-correct, IBPO), in
    equal shares, with ``replay_fraction`` of solving examples mixed in.

    ``demo_error_rate``: the share of solving demonstrations that carry one planted
    wrong thought (the task's ``corrupt``), as demonstrations from an imperfect teacher
    do. The policy then slips at a controlled rate that outcome RL can learn to avoid,
    and the step oracle knows where each slip is. 0 imitates only correct solutions.

    ``demo_repair_rate``: the share of those erroneous demonstrations whose slip the next
    thought repairs (``~`` and the step redone, the task's ``repaired``; the slip is then
    on a step line, never the answer line), so that the policy learns to notice and repair
    some of its own slips and an erroneous prefix can still succeed. 0: slips are never
    repaired.

    ``micro_batches``: each batch is sorted by length and cut into this many micro-batches,
    each padded only to its own longest example, with gradients accumulated over the
    batch's target tokens (transformers' ``num_items_in_batch``), so the update is the
    one-batch update, to float rounding, with less padding to compute (on the testbed
    about 40-50% of a batch's positions are padding, 15-20% after sorting into 3, and a
    step takes 15-30% less time on 2 CPU threads; more parts add per-forward overhead
    than they save; ``benchmarks/warmstart_step.py``). 1: one padded batch.
    """

    steps: NonNegInt = 720
    skill_steps: NonNegInt = 300
    skills: list[Literal["localisation", "revision"]] = ["localisation", "revision"]
    replay_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5
    demo_error_rate: Annotated[float, Field(ge=0, lt=1)] = 0.0
    demo_repair_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    batch_size: PositiveInt = 64
    micro_batches: PositiveInt = 3
    lr: PositiveFloat = 2e-3
    warmup_steps: NonNegInt = 50
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    eval_problems: PositiveInt = 500
    seed: int = 0


# ----------------------------------------------------------------------- sampling
class VLLMConfig(Strict):
    """The vLLM rollout engine (``sampling.backend: vllm``; ``creditbench/vllm_backend.py``).

    One engine per training process, colocated with the trainer, prefix caching on.
    ``tensor_parallel_size``: GPUs per engine (1 on CPU). ``gpu_memory_utilization``: the
    share of a GPU's memory the engine may take (weights and KV cache; the trainer needs
    the rest). ``sleep``: release the engine's memory during the update (vLLM sleep mode;
    null: where the platform supports it, i.e. CUDA; true where it does not is an error).
    ``cpu_kv_cache_gib``: the KV cache of the CPU build, in GiB. ``max_model_len``: the
    longest context plus completion (null: the model's ``max_position_embeddings``).
    ``enforce_eager``: no CUDA graphs (faster start-up, slower decode). ``block_size``:
    tokens per KV-cache block, the prefix cache's unit (null: vLLM's, 128 on CPU, where
    it must be a multiple of 32; a prefix shorter than a block is never served from the
    cache).
    """

    tensor_parallel_size: PositiveInt = 1
    gpu_memory_utilization: Annotated[float, Field(gt=0, lt=1)] = 0.3
    sleep: bool | None = None
    cpu_kv_cache_gib: PositiveFloat = 1.0
    max_model_len: PositiveInt | None = None
    enforce_eager: bool = True
    block_size: PositiveInt | None = None


class SamplingConfig(Strict):
    """``backend``: what samples the training rollouts: ``hf`` (the engine's decoding loop,
    ``creditbench.decode``, on the trainer's own model) or ``vllm`` (a colocated vLLM
    engine, ``vllm``'s settings; install it with ``scripts/vllm_cpu_env.sh`` on CPU).
    Evaluation and diagnostics always use ``hf``."""

    temperature: PositiveFloat = 1.0
    top_p: Probability = 1.0
    max_new_tokens: PositiveInt = 96  # the response length (a suffix: prefix + suffix)
    batch_size: PositiveInt = 256  # rows per ``generate`` batch (the cap on rows)
    # [choice] memory: a ``generate`` batch of the hf backend holds at most this many KV
    # positions, rows x (longest context in the batch + its largest token budget), so the
    # KV cache stays under this x (KV bytes per token); rows are cut greedily in order, one
    # row at least per batch, ``batch_size`` still capping the rows (null: rows only). The
    # vllm backend schedules its own batches (``sampling.vllm.gpu_memory_utilization``)
    max_batch_tokens: PositiveInt | None = None
    # hf backend, several processes: keep every process's generation in step, each
    # sampler call and each decoding step of it a collective (``creditbench.decode``), as
    # the forwards of a sharded model need. null: exactly when the model is sharded (FSDP,
    # ZeRO-3); true forces it (tests), false never (unsafe under sharding)
    synced: bool | None = None
    backend: Literal["hf", "vllm"] = "hf"
    vllm: VLLMConfig = VLLMConfig()


# ------------------------------------------------------------------------- train
class TrainConfig(Strict):
    steps: PositiveInt = 100
    prompts_per_step: PositiveInt = 8
    group_size: Annotated[int, Field(ge=2)] = 8
    lr: PositiveFloat = 1e-4
    lr_schedule: Literal["constant_with_warmup", "linear", "cosine"] = "constant_with_warmup"
    warmup_steps: NonNegInt = 0
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    adam_betas: tuple[Probability, Probability] = (0.9, 0.999)
    max_grad_norm: PositiveFloat = 1.0
    epochs: PositiveInt = 1
    minibatches: PositiveInt = 1
    # sequences per forward (gradient accumulation), rows of similar completion length
    # together, each micro-batch at its own width; the no-grad scoring passes (behaviour
    # and reference log-probs) go by the same micro-batches. null: the whole minibatch
    micro_batch_size: PositiveInt | None = None
    # [choice] memory: recompute each decoder layer's activations in the backward instead
    # of keeping them (transformers' ``gradient_checkpointing_enable`` with
    # ``use_reentrant=False``, and ``config.use_cache=False`` for the updates), on the
    # policy and on every transformers model a method owns (a critic's backbone); the
    # sampler's ``generate`` runs in eval mode and keeps its KV cache. Same loss and
    # gradients, about a third more compute per update
    gradient_checkpointing: bool = False
    checkpoint_every: PositiveInt = 25
    # also a checkpoint at the first step boundary this many minutes after the last one
    # (a step count can outlast a cluster time limit); null: by steps only
    checkpoint_minutes: PositiveFloat | None = None
    keep_checkpoints: PositiveInt = 2
    eval_every: NonNegInt = 25
    eval_problems: PositiveInt = 200


# -------------------------------------------------------------------------- loss
class LossConfig(Strict):
    """One policy-gradient loss for every method (``creditbench/loss.py`` has the formulas).

    clip=True: PPO surrogate on ``pi/pi_old`` clipped to [1-epsilon, 1+epsilon_high].
    clip=False: ``unclipped_objective`` says what is maximised: ``ratio`` (default)
    = ``-A * log pi`` on the first pass over a batch and ``-A * pi/pi_old`` (no clip) on
    later minibatches and epochs, where the engine has behaviour log-probs; ``logprob``
    = ``-A * log pi`` in every minibatch and epoch (REINFORCE; SRPO's code), which never
    uses behaviour log-probs (same gradient as ``ratio`` where pi = pi_old).
    aggregation: ``grpo`` = per-sequence token mean then batch mean;
    ``dapo`` = global token mean over the batch.
    KL (``beta`` > 0, the k3 estimator to the reference model): ``kl_clamp`` clamps each
    token's k3 to ``[0, kl_clamp]`` (null: no clamp; VinePPO's code: 10);
    ``kl_reduction``: ``token_mean`` adds ``beta * k3`` to every token's loss, reduced
    with the policy term by ``aggregation`` (TRL, DeepSeekMath); ``sequence_sum`` adds
    ``beta * mean over sequences of (sum over the sequence's tokens of k3)``, whatever
    the aggregation (VinePPO's code, ``PPOTrainer._compute_actor_loss``).
    ``kl_ratio_correction``: weight the k3 KL by the ratio pi/pi_old (TRL 1.16's
    ``use_bias_correction_kl``, which TRL turns on by default; off here, as in
    DeepSeekMath and VinePPO).
    """

    clip: bool = True
    epsilon: Annotated[float, Field(gt=0, lt=1)] = 0.2
    epsilon_high: PositiveFloat | None = None
    unclipped_objective: Literal["ratio", "logprob"] = "ratio"
    beta: Annotated[float, Field(ge=0)] = 0.0
    kl_ratio_correction: bool = False
    kl_reduction: Literal["token_mean", "sequence_sum"] = "token_mean"
    kl_clamp: PositiveFloat | None = None
    aggregation: Literal["grpo", "dapo"] = "grpo"


# -------------------------------------------------------------------- evaluation
class EvalConfig(Strict):
    """Final evaluation of every run x seed: one job per suite, or per run x seed.

    ``suites``: lm-eval task names (``null``: the task's own local suites, e.g.
    ``chains_test`` and ``chains_test_long``). ``backend``: ``lm-eval`` (the harness,
    with its ``hf`` or ``vllm`` model) or ``creditbench`` (the engine's own sampler,
    local suites only). ``problems``: at most this many problems per suite.
    ``temperature`` 0 is greedy; above 0, ``samples`` completions per problem are scored
    by their mean (mean@k, the expected reward of the sampling policy).
    ``max_length``: the HF backend's context (prompt + generation; null: the model's
    own); ``max_gen_toks`` overrides the suites' generation budgets. ``data_files``:
    suites read from local files in their dataset's format, ``{suite: path}`` or, for a
    group, ``{suite: {task: path}}`` (offline use; otherwise real suites load from the hub).
    ``group_suites``: one evaluation job per run x seed for all suites (one process, one
    harness call, the model loaded once) instead of one job per suite. Worth it where a
    suite evaluates in less time than a process takes to start (a tiny model: about 2 s
    of generation against 7 s of importing torch, transformers and lm-eval); per suite
    (the default) where suites are long and run in parallel on several GPUs.
    ``group_seeds``: likewise one job per run for all its seeds (each seed's model in
    turn, in one process), started once every seed has trained.
    ``lm_eval_model``: lm-eval's model: ``hf`` (transformers, as lm-eval ships it),
    ``creditbench-hf`` (the same with its batches decoded by the engine's loop, finished
    rows leaving the batch: ``creditbench.lmeval_hf``) or ``vllm``.
    ``batch_size``: lm-eval's, a number or ``auto`` (null: 64 on ``hf``, ``auto`` on
    ``vllm``, where the engine schedules every request at once). ``vllm_*``: lm-eval's
    vLLM model (``lm_eval_model: vllm`` only): the fraction of the GPU's memory the engine
    takes (weights and KV cache), its context (prompt + generation; null: the model's
    own), and the GPUs it spans by tensor and data parallelism (data parallelism needs
    ray); an evaluation job of a real model asks for their product of GPUs.
    """

    suites: list[str] | None = None
    backend: Literal["lm-eval", "creditbench"] = "lm-eval"
    lm_eval_model: Literal["hf", "creditbench-hf", "vllm"] = "hf"
    batch_size: PositiveInt | Literal["auto"] | None = None
    vllm_gpu_memory_utilization: Probability = 0.9
    vllm_max_model_len: PositiveInt | None = None
    vllm_tensor_parallel_size: PositiveInt = 1
    vllm_data_parallel_size: PositiveInt = 1
    problems: PositiveInt | None = 500
    samples: PositiveInt = 1
    temperature: Annotated[float, Field(ge=0)] = 0.0
    seed: int = 0
    max_length: PositiveInt | None = None
    max_gen_toks: PositiveInt | None = None
    data_files: dict[str, str | dict[str, str]] = {}
    group_suites: bool = False
    group_seeds: bool = False

    @model_validator(mode="after")
    def _samples(self) -> EvalConfig:
        if self.temperature == 0 and self.samples != 1:
            raise ValueError(
                f"samples: greedy evaluation (temperature 0) takes one sample, got {self.samples}"
            )
        return self


# ----------------------------------------------------------------------- launch
class LaunchConfig(Strict):
    """How a training job starts: one process, or ``accelerate launch`` over several.

    ``num_processes`` > 1 runs ``accelerate launch`` (one process per GPU, DDP unless
    ``accelerate_config`` names a DeepSpeed or FSDP file under ``experiments/accelerate/``).
    ``gpus_per_job``: the ``gpu`` resource a training job asks for (default: one per
    process on a real model, none for the tiny testbed model).
    ``num_machines`` > 1: one training job spans that many nodes of a SLURM allocation
    (``num_processes`` counts the processes of all of them, accelerate's convention, so
    it is a multiple of ``num_machines``): ``scripts/accelerate_multinode.sh`` runs one
    ``accelerate launch`` per node through ``srun``, the first node the rendezvous host.
    ``group_seeds``: one training job per run, which trains its seeds one after another
    in one process (each seed in its own folder, resumed from its own checkpoints, with
    the results of a job per seed), so the process start-up (torch and transformers
    imports, ~8 s on a small CPU) is paid once per run, not once per seed; for the CPU
    testbed, where a seed trains in a minute. One process only (``num_processes`` 1).
    """

    num_processes: PositiveInt = 1
    accelerate_config: str | None = None
    gpus_per_job: NonNegInt | None = None
    num_machines: PositiveInt = 1
    group_seeds: bool = False

    @model_validator(mode="after")
    def _grouped_seeds_in_one_process(self):
        if self.group_seeds and self.num_processes > 1:
            raise ValueError(
                f"launch.group_seeds trains a run's seeds one after another in one process: "
                f"it needs launch.num_processes 1, not {self.num_processes} (a multi-process "
                f"job per seed costs its start-up once per hours of training anyway)"
            )
        return self

    @model_validator(mode="after")
    def _machines_divide_processes(self):
        if self.num_machines > 1 and (
            self.num_processes < self.num_machines or self.num_processes % self.num_machines
        ):
            raise ValueError(
                f"launch.num_processes ({self.num_processes}) counts the processes of all "
                f"launch.num_machines ({self.num_machines}) nodes: give a multiple of it"
            )
        return self


# ------------------------------------------------------------------ diagnostics
class DiagnosticsConfig(Strict):
    """Sizes of the credit diagnostics stage (``analysis.diagnostics``); null: its default.

    ``enabled``: null runs the stage when the task has a step oracle (the testbed).
    See ``creditbench.diagnostics.DiagnosticsSettings`` for each size's meaning and default.
    """

    enabled: bool | None = None
    probes: PositiveInt | None = None
    pool: PositiveInt | None = None
    failure_fraction: Annotated[float, Field(ge=0, le=1)] | None = None
    mc_rollouts: Annotated[int, Field(ge=2)] | None = None
    batches: PositiveInt | None = None
    repeats: PositiveInt | None = None
    ranking_ks: list[PositiveInt] | None = None
    ranking_candidates: Annotated[int, Field(ge=2)] | None = None
    ranking_truth_rollouts: Annotated[int, Field(ge=2)] | None = None
    ranking_min_gap: Annotated[float, Field(ge=0)] | None = None
    ranking_min_z: Annotated[float, Field(ge=0)] | None = None
    seed: int | None = None


# ------------------------------------------------------------------------- runs
class RunConfig(Strict):
    """A fully resolved run: method, its parameters, and every setting it trains with."""

    name: str
    method: str
    params: dict[str, Any] = {}
    task: TaskConfig
    model: ModelConfig
    sampling: SamplingConfig
    train: TrainConfig
    loss: LossConfig
    eval: EvalConfig


_SECTIONS = {"sampling": SamplingConfig, "train": TrainConfig, "loss": LossConfig}


class ExperimentConfig(Strict):
    experiment: Annotated[str, Field(pattern=r"^[\w.-]+$")] = "default"
    seeds: list[int] = [0, 1, 2]
    methods_dir: str | None = None
    task: TaskConfig = ChainsTaskConfig()
    model: ModelConfig = ModelConfig()
    warm_start: WarmStartConfig = WarmStartConfig()
    sampling: dict[str, Any] = {}
    train: dict[str, Any] = {}
    loss: dict[str, Any] = {}
    eval: EvalConfig = EvalConfig()
    launch: LaunchConfig = LaunchConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    runs: dict[str, dict[str, Any]] = {"grpo": {"method": "grpo"}}

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {v}")
        return v

    @field_validator("runs")
    @classmethod
    def _run_names(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not v:
            raise ValueError("runs must name at least one run")
        for name, spec in v.items():
            if not re.fullmatch(r"[\w.-]+", name):
                raise ValueError(f"run name {name!r} may only use letters, digits, '_', '.', '-'")
            if not isinstance(spec, dict) or "method" not in spec:
                raise ValueError(f"run {name!r} must be a mapping with a 'method' key")
        return v

    def run(self, name: str) -> RunConfig:
        """Resolve and validate one run (raises ConfigError naming the bad key)."""
        if name not in self.runs:
            raise ConfigError(f"unknown run {name!r}; this experiment defines: {sorted(self.runs)}")
        from creditbench.methods import load_method  # local import: methods import the engine

        spec = copy.deepcopy(self.runs[name])
        method_name = spec.pop("method")
        try:
            method = load_method(method_name, self.methods_dir)
        except KeyError as e:
            raise ConfigError(f"runs.{name}.method: {e.args[0]}") from None
        sections = {}
        for key, model in _SECTIONS.items():
            merged = _deep_merge(
                getattr(method, "DEFAULTS", {}).get(key, {}), getattr(self, key), spec.pop(key, {})
            )
            sections[key] = _validate(model, merged, f"runs.{name}.{key}")
        params = _validate(method.Params, spec, f"runs.{name}").model_dump()
        return RunConfig(
            name=name,
            method=method_name,
            params=params,
            task=self.task,
            model=self.model,
            eval=self.eval,
            **sections,
        )

    def all_runs(self) -> dict[str, RunConfig]:
        return {name: self.run(name) for name in self.runs}


def _deep_merge(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for k, v in (layer or {}).items():
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = _deep_merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
    return out


def _format_errors(err: ValidationError, prefix: str, model: type[BaseModel] | None = None) -> str:
    """One line per problem: the key path, what is wrong, what is allowed."""
    lines = []
    for e in err.errors():
        parts = [str(p) for p in (prefix, *e["loc"]) if p != ""]
        # a tagged union (the task section) puts its tag in the path: leave it out
        parts = [
            p for i, p in enumerate(parts) if not (i and parts[i - 1] == "task" and p in _TASK_TAGS)
        ]
        loc = ".".join(parts)
        msg = e["msg"]
        got = f" (got {_short(e['input'])})" if e["type"] != "missing" and "input" in e else ""
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, e["loc"]) if model is not None else []
            msg, got = "unknown key", ""
            close = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
            if close:
                msg += f"; did you mean {close[0]!r}?"
            if allowed:
                msg += f" (allowed: {', '.join(allowed)})"
        lines.append(f"{loc}: {msg}{got}")
    return "\n".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the section holding ``loc``'s last key allows (``[]`` where unknown)."""
    current: Any = model
    path = list(loc[:-1])
    while path:
        part = path.pop(0)
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        members = _models_in(field.annotation)
        if len(members) > 1 and path:  # a tagged union: the tag is the next part
            tag = path.pop(0)
            members = [
                m for m in members if getattr(m.model_fields.get("name"), "default", None) == tag
            ]
        if len(members) != 1:
            return []
        current = members[0]
    return sorted(current.model_fields)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _models_in(arg)
    return out


def _validate(model: type[BaseModel], data: dict[str, Any], prefix: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, prefix, model)) from None


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as a string; accept the YAML 1.2 float forms everyone writes."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"
    ),
    list("-+0123456789."),
)


def load_experiment(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load, validate and resolve an experiment YAML; every run is validated too."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return experiment_from_dict(data, source=str(path), overrides=overrides)


def experiment_from_dict(
    data: dict[str, Any], source: str = "<config>", overrides: dict[str, Any] | None = None
) -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    data = _deep_merge(data, overrides or {})
    try:
        cfg = _validate(ExperimentConfig, data, "")
        for key, model in _SECTIONS.items():  # shared sections must be valid on their own
            _validate(model, getattr(cfg, key), key)
        cfg.all_runs()
        _check_suites(cfg)
    except ConfigError as e:  # one line per problem, each naming the file
        raise ConfigError("\n".join(f"{source}: {line}" for line in str(e).splitlines())) from None
    return cfg


def _check_suites(cfg: ExperimentConfig) -> None:
    """Every ``eval.suites`` entry names a suite that exists: one of the task's own local
    suites, a suite under ``experiments/tasks/``, or one of lm-eval's tasks."""
    if not cfg.eval.suites:
        return
    from creditbench.lmeval import lm_eval_task_names, suite_names
    from creditbench.tasks import make_task

    ours = sorted({*make_task(cfg.task).suites, *suite_names()})
    unknown = [s for s in cfg.eval.suites if s not in ours]
    if unknown:
        builtin = lm_eval_task_names()
        unknown = [s for s in unknown if s not in builtin]
    if unknown:  # lm-eval builds some task names in code: its own index has the last word
        from lm_eval.tasks import TaskManager

        every = set(TaskManager().all_tasks)
        unknown = [s for s in unknown if s not in every]
    problems = []
    for name in unknown:
        close = difflib.get_close_matches(name, ours, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.append(
            f"eval.suites: unknown suite {name!r}{hint} (suites: {', '.join(ours)}; "
            "or any lm-eval task)"
        )
    if problems:
        raise ConfigError("\n".join(problems))


def json_schema() -> dict[str, Any]:
    """The experiment file's JSON schema (``experiments/schema/config.schema.json``).

    Snakemake validates the config against it before building the DAG; the typed
    config then checks what a schema cannot (run sections, method parameters).
    """
    schema = ExperimentConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "creditbench experiment"
    return schema
