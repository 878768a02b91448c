"""Data-parallel RL under ``accelerate launch``: the helpers the Trainer uses.

One process (plain ``python`` or ``creditbench train``) is the degenerate case: every
helper here is then the identity and the Trainer computes exactly what it always did.
Under ``accelerate launch --num_processes N`` (DDP; DeepSpeed / FSDP from an accelerate
config file) each process

- takes a disjoint, contiguous shard of the step's prompts (``shard``; the global
  ``prompts_per_step`` must be divisible by N), so each prompt's group is collected and
  normalised on one process, as in one process;
- samples with its own RNG (seeded ``seed + rank``) from the *bare* model (never the DDP
  wrapper: ``generation_context`` gathers sharded parameters where a backend needs it);
- contributes ``world_size x`` its share of the loss, normalised by the *global* token
  and sequence counts (``Collective.sum``), so DDP's gradient average equals the gradient
  of one process on the whole batch;
- charges its own tokens to its own ledger; ``global_ledger`` sums them over processes
  (seconds are the main process's wall-clock);
- calls every trained or sharded model (policy, reference, a method's critic) the same
  number of times in every training-time phase, whatever its shard holds (below).

Equal calls. Under FSDP and DeepSpeed ZeRO-3 every forward and backward of a sharded
model is a collective (its parameters are all-gathered, its gradients reduce-scattered),
and under DDP every backward all-reduces the gradients: a process that makes one call
fewer leaves the others waiting forever. Where the number of calls follows from the
process's data (failed completions, probes, segments, micro-batches), the loop goes
through ``lockstep(collective, chunks)``: every process agrees on the largest count
(``Collective.max_count``, one ``all_reduce(max)``) and a process short of chunks gets
``None`` for the rest, on which it calls the model with a placeholder input whose
result it discards (a backward of it is weighted 0). The engine's update pads its
minibatches and micro-batches so; so do OAR's importance passes, SPO's token
probabilities and PPO's critic forwards and updates. The padding is not charged to the
ledger and changes no result (a one-process run pads nothing).

Generation follows the same rule. With ``sampling.backend: vllm`` it is local: the
engine samples from its own copy of the weights, which it takes once per step on
entering ``Sampler.rollouts`` (equal on every process), so the number of generate calls
may differ. With ``hf`` under FSDP or ZeRO-3 the bare model's forwards are the sharded
ones (``generation_context`` gathers only the FSDP root's own parameters, nothing under
ZeRO-3), so the sampler keeps generation in step (``Sampler.is_synced``,
``sampling.synced``): every ``generate`` call runs as many batches on every process, each
batch's shared prefill and decoding steps are collectives (``creditbench.decode``), a
process with no rows takes part with a placeholder row, and methods whose sampler calls
depend on their data (IBPO's revisions, SRPO's search rounds, top-ups, localisation and
suffixes, VinePPO's Monte Carlo states, SPO-tree's expansions) ask
``MethodContext.any_process`` before each such call, so every process calls the sampler
equally often.

Launch (GPUs): ``accelerate launch --num_processes N [--config_file F] -m creditbench.cli
train ...``. On CPUs (tests), ``accelerate launch --cpu`` starts one process unless MPI is
set up; ``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...``
starts N processes over gloo.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import torch

from creditbench.config import ConfigError
from creditbench.ledger import Ledger

T = TypeVar("T")


def make_accelerator():
    """An ``Accelerator`` configured by ``accelerate launch`` (backend, mixed precision).

    DDP buffers are not broadcast on every forward: the policy's buffers (rotary
    frequencies) are constants, and a per-forward broadcast would make every forward a
    collective that all processes must call equally often.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])


def shard(items: Sequence[T], num_processes: int, rank: int, what: str) -> list[T]:
    """Process ``rank``'s contiguous share of ``items`` (rank 0 first, as in one process)."""
    n = len(items)
    if n % num_processes:
        raise ConfigError(
            f"{what} ({n}) must be divisible by the number of processes ({num_processes}): "
            f"every process trains on the same number of prompts; use a multiple of "
            f"{num_processes} or launch a number of processes that divides {n}"
        )
    k = n // num_processes
    return list(items[rank * k : (rank + 1) * k])


def is_sharded(accelerator) -> bool:
    """Whether parameters are partitioned over processes (FSDP, DeepSpeed ZeRO-3)."""
    from accelerate.utils import DistributedType

    # DeepSpeed partitions the optimizer state from ZeRO-1 on, the parameters at ZeRO-3
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


class Collective:
    """Reductions over processes; the identity (no communication) in one process."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index

    def _reduce(self, values: Sequence[float], op, dtype) -> list:
        t = torch.tensor(list(values), dtype=dtype, device=self.accelerator.device)
        torch.distributed.all_reduce(t, op=op)
        return t.tolist()

    def sum(self, values: Sequence[float]) -> list[float]:
        if self.world == 1:
            return list(values)
        return self._reduce(values, torch.distributed.ReduceOp.SUM, torch.float64)

    def max(self, values: Sequence[int]) -> list[int]:
        if self.world == 1:
            return list(values)
        return [int(v) for v in self._reduce(values, torch.distributed.ReduceOp.MAX, torch.int64)]

    def max_count(self, n: int) -> int:
        """The largest ``n`` over processes (``n`` in one process): how often each process
        must call a model when every call is a collective (see ``lockstep``)."""
        (m,) = self.max([int(n)])
        return m

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def lockstep(collective: Collective | None, chunks: Sequence[T]) -> Iterator[T | None]:
    """``chunks``, then ``None`` until this process has had as many turns as the process
    with the most (``Collective.max_count``; ``collective`` None: ``chunks`` alone).

    A loop that calls a sharded or trained model once per chunk calls it once per ``None``
    too, on a placeholder input, and discards the result (or weights its loss 0), so
    every process makes the same calls whatever its data. Collective: every process
    iterates it (the count is agreed on the first turn).
    """
    n = len(chunks) if collective is None else collective.max_count(len(chunks))
    for i in range(n):
        yield chunks[i] if i < len(chunks) else None


def global_ledger(coll: Collective, ledger: Ledger) -> Ledger:
    """Tokens summed over processes; seconds by phase are the main process's (wall-clock)."""
    if coll.world == 1:
        return ledger
    parts = coll.gather((dict(ledger.generated), dict(ledger.forwarded), dict(ledger.seconds)))
    out = Ledger()
    for generated, forwarded, _ in parts:
        for k, v in generated.items():
            out.generated[k] += v
        for k, v in forwarded.items():
            out.forwarded[k] += v
    out.seconds.update(parts[0][2])
    return out


def merge_update_stats(coll: Collective, stats: dict[str, list[float]]) -> dict[str, list[float]]:
    """One process's per-micro-batch statistics -> everyone's.

    ``loss`` entries are each process's share of the global loss (they sum to it);
    ``grad_norm`` is the same on every process (gradients are already reduced), so the
    main process's is kept; other entries are pooled.
    """
    if coll.world == 1:
        return stats
    parts = coll.gather(stats)
    out: dict[str, list[float]] = {}
    for part in parts:
        for k, v in part.items():
            if k != "grad_norm":
                out.setdefault(k, []).extend(v)
    if "grad_norm" in parts[0]:
        out["grad_norm"] = list(parts[0]["grad_norm"])
    return out


def configure_deepspeed(accelerator, micro_batch_size: int | None) -> None:
    """DeepSpeed wants a micro-batch size before ``prepare``; no dataloader is prepared here
    (the loop builds its own batches), so it comes from ``train.micro_batch_size`` when the
    accelerate config leaves it unset. Gradient clipping is DeepSpeed's own
    (``gradient_clipping`` in the accelerate config), not ``train.max_grad_norm``."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    cfg = plugin.deepspeed_config
    if cfg.get("train_micro_batch_size_per_gpu") in (None, "auto"):
        cfg["train_micro_batch_size_per_gpu"] = micro_batch_size or 1


@contextlib.contextmanager
def generation_context(accelerator, wrapped_model):
    """Make the bare model usable for ``generate`` (and plain forwards) while inside.

    DDP, DeepSpeed ZeRO-1/2 and one process: nothing to do (every process holds the full
    weights). FSDP (v1): the root's own parameters are summoned; the inner units gather
    theirs in their forwards (as TRL does). FSDP and ZeRO-3 forwards are collectives:
    the sampler keeps its calls and decoding steps in step across processes (the module
    docstring). A method's scoring forwards of the bare model (OAR, SPO) run inside it
    too. The gathering itself is untested (no GPUs here); the keeping in step is tested on
    two CPU processes with ``sampling.synced: true``.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP and not getattr(
        accelerator, "is_fsdp2", False
    ):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(wrapped_model, recurse=False, writeback=False):
            yield
    else:
        yield
