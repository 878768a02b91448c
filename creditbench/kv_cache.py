"""A KV cache for the HF sampler that grows in place instead of by concatenation.

transformers' ``DynamicCache`` appends each decoding step's keys and values with
``torch.cat``, which copies the whole cache at every step: a generation of T tokens
copies O(T^2) cache entries per row. On the testbed's tiny model that copying is the
largest single cost of sampling (about 40% of a VinePPO step, whose Monte Carlo
contexts are long; ``benchmarks/kv_cache.py``). ``PreallocatedCache`` is a
``DynamicCache`` whose full-attention layers write each step into a buffer allocated
once for the batch's longest context plus its budget, and hand attention a view of the
filled part. The keys and values it returns are those of ``DynamicCache`` exactly, so
generations are the same token for token (tested in ``tests/test_kv_cache.py``).

Layers of any other kind (sliding windows, linear attention) keep transformers' own
class. Only the layer interface that ``generate`` and ``Sampler`` use is overridden:
``update``, ``get_seq_length`` (hence ``get_mask_sizes``), ``crop`` and the batch
reshaping that shared prefills and beam search call.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One attention layer's cache in a ``[batch, heads, capacity, head_dim]`` buffer.

    ``keys``/``values`` are views of the first ``length`` positions. A step that would
    overflow the capacity reallocates at twice the size (never expected when the
    capacity is the context plus the budget; kept so that a wrong estimate is slow,
    not wrong)."""

    def __init__(self, capacity: int):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        batch, heads = key_states.shape[:2]
        self._k = key_states.new_empty((batch, heads, self.capacity, key_states.shape[-1]))
        self._v = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))
        self.length = 0
        self.is_initialized = True

    def _views(self) -> None:
        self.keys = self._k[:, :, : self.length]
        self.values = self._v[:, :, : self.length]

    def _grow(self, needed: int) -> None:
        size = max(needed, 2 * self._k.shape[2])
        for name in ("_k", "_v"):
            old = getattr(self, name)
            new = old.new_empty((*old.shape[:2], size, old.shape[-1]))
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._k.shape[2]:
            self._grow(end)
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def reset(self) -> None:
        self.length = 0
        self.keys = self.values = None
        self.is_initialized = False

    def crop(self, tokens_to_remove: int) -> None:
        """Drop the last ``-tokens_to_remove`` positions (transformers' convention: a
        negative count; a positive one is an absolute length, the legacy form)."""
        if not self.is_initialized:
            return
        keep = tokens_to_remove if tokens_to_remove >= 0 else self.length + tokens_to_remove
        self.length = max(0, min(self.length, keep))
        self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self._views()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            self.batch_select_indices(beam_idx.to(self._k.device))


class PreallocatedCache(DynamicCache):
    """``DynamicCache(config=...)`` with its full-attention layers preallocated to
    ``capacity`` positions (context width plus the generation budget)."""

    def __init__(self, config, capacity: int):
        super().__init__(config=config)
        self.layers = [
            PreallocatedLayer(capacity) if type(layer) is DynamicLayer else layer
            for layer in self.layers
        ]
