"""KV-cached batched decoding for the ``hf`` policy: prefix reuse across turns, no per-step copies.

Three things make a transformers model's rollouts cheap on a small machine, where ``generate`` spends
most of a multi-turn episode re-reading prompts and copying its cache:

* **Prefix reuse.** A revision turn's prompt is the previous prompt, the previous reply and the
  feedback. :class:`PrefixStore` keeps each finished row's keys/values (prompt + reply), bounded in
  bytes, and a later prompt that starts with a stored sequence prefills only its new suffix. Stored
  states belong to one set of weights: the store empties itself when any parameter changes in place
  (an optimizer step, a weight push), so a trainer's live policy never reads stale states.
* **A preallocated cache.** :class:`SlabLayer` writes each step's keys/values into a buffer sized for
  the whole batch (prefix + suffix + reply budget) instead of concatenating, and hands attention a view.
* **Finished rows leave the batch.** Once a quarter of the live rows have stopped, the batch (cache,
  mask, positions) shrinks to the rows still generating.

Each batch is laid out as ``[pad | cached prefix | pad | new suffix | reply]`` per row, with an
attention mask over real tokens and positions counted over them, so a row's states and positions are
exactly those of an unpadded run. Models whose positions are not a plain count over the sequence
(multimodal RoPE, e.g. Qwen2-VL) are not served here: :func:`supports_fast_decode` says so and the
policy uses transformers' ``generate`` for them.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

COMPACT_SHARE = 0.25
"""Shrink the batch once this share of its live rows has finished (each shrink copies the cache)."""


class SlabLayer(CacheLayerMixin):
    """One layer's keys/values in a buffer preallocated to ``capacity`` positions (no concatenation)."""

    is_sliding = False

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self.buf_k: torch.Tensor | None = None
        self.buf_v: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.buf_k = key_states.new_zeros((b, h, self.capacity, d))
        self.buf_v = value_states.new_zeros((b, h, self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self.buf_k is not None and self.buf_v is not None
        n = key_states.shape[-2]
        self.buf_k[:, :, self.length : self.length + n] = key_states
        self.buf_v[:, :, self.length : self.length + n] = value_states
        self.length += n
        self.keys = self.buf_k[:, :, : self.length]
        self.values = self.buf_v[:, :, : self.length]
        return self.keys, self.values

    def preload(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Start from ``[B, H, L, D]`` states already computed (the batch's cached prefixes)."""
        self.lazy_initialization(keys, values)
        assert self.buf_k is not None and self.buf_v is not None
        n = keys.shape[-2]
        self.buf_k[:, :, :n] = keys
        self.buf_v[:, :, :n] = values
        self.length = n
        self.keys, self.values = self.buf_k[:, :, :n], self.buf_v[:, :, :n]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.buf_k is None or self.buf_v is None:
            return
        self.buf_k, self.buf_v = self.buf_k[indices], self.buf_v[indices]
        self.keys = self.buf_k[:, :, : self.length]
        self.values = self.buf_v[:, :, : self.length]

    def row_states(self, row: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One row's ``[H, n, D]`` keys/values at ``positions`` (its real tokens), as new tensors."""
        assert self.buf_k is not None and self.buf_v is not None
        return self.buf_k[row, :, positions].clone(), self.buf_v[row, :, positions].clone()


@dataclass
class PrefixEntry:
    """Keys/values of one token sequence: per layer ``([H, n, D], [H, n, D])``."""

    states: list[tuple[torch.Tensor, torch.Tensor]]
    nbytes: int


class PrefixStore:
    """Recently decoded sequences' states, keyed by their token ids, LRU-bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[int, ...], PrefixEntry] = OrderedDict()
        self.bytes = 0
        self._lengths: dict[int, int] = {}
        self._version: int | None = None
        self.hits = 0
        self.reused_tokens = 0

    def check_weights(self, version: int) -> None:
        """Forget everything computed with other weights."""
        if version != self._version:
            self.clear()
            self._version = version

    def clear(self) -> None:
        self.entries.clear()
        self._lengths.clear()
        self.bytes = 0

    def put(self, ids: Sequence[int], states: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if self.max_bytes <= 0 or not ids:
            return
        key = tuple(ids)
        nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in states)
        if nbytes > self.max_bytes:
            return
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        self.entries[key] = PrefixEntry(states, nbytes)
        self.bytes += nbytes
        self._lengths[len(key)] = self._lengths.get(len(key), 0) + 1
        while self.bytes > self.max_bytes:
            old, entry = self.entries.popitem(last=False)
            self.bytes -= entry.nbytes
            self._lengths[len(old)] -= 1
            if not self._lengths[len(old)]:
                del self._lengths[len(old)]

    def longest_prefix(self, ids: Sequence[int]) -> tuple[int, PrefixEntry | None]:
        """The longest stored sequence that is a proper prefix of ``ids`` (at least one token must
        stay new: its logits start the reply)."""
        for n in sorted(self._lengths, reverse=True):
            if n >= len(ids):
                continue
            entry = self.entries.get(tuple(ids[:n]))
            if entry is not None:
                self.entries.move_to_end(tuple(ids[:n]))
                self.hits += 1
                self.reused_tokens += n
                return n, entry
        return 0, None


def weights_version(model: Any) -> int:
    """A number that changes whenever any parameter is modified in place (``Tensor._version``)."""
    return sum(int(p._version) for p in model.parameters()) + id(model)


def supports_fast_decode(model: Any) -> bool:
    """Whether positions are a plain count over real tokens (what :func:`decode` passes)."""
    config = model.config
    text_cfg = getattr(config, "text_config", None) or config
    for cfg in (config, text_cfg):
        for key in ("rope_parameters", "rope_scaling"):
            rope = getattr(cfg, key, None)
            if isinstance(rope, dict) and "mrope_section" in rope:
                return False
    inner = getattr(model, "model", None)
    return not (hasattr(model, "get_rope_index") or hasattr(inner, "get_rope_index"))


@dataclass
class Row:
    """One request of a batch: its prompt ids, reply budget and (vision) model inputs."""

    ids: list[int]
    budget: int
    inputs: dict[str, Any] = field(default_factory=dict)
    """Image tensors etc. for this row (only used when its whole prompt is prefilled: a cached prefix
    is used only if the new suffix holds no image placeholder)."""


StepFn = Callable[[torch.Tensor, list[int]], tuple[torch.Tensor, torch.Tensor]]
"""(logits [A, V] of the live rows, their row indices) -> (chosen tokens [A], their log-probs [A])."""


def decode(
    model: Any,
    rows: Sequence[Row],
    step: StepFn,
    eos_ids: set[int],
    pad_token_id: int,
    store: PrefixStore | None,
    placeholder_ids: Sequence[int] = (),
) -> list[tuple[list[int], list[float]]]:
    """Generate every row's reply (tokens up to and including a stop token, or ``budget`` tokens)."""
    device = next(model.parameters()).device
    b = len(rows)
    cached: list[int] = []
    entries: list[PrefixEntry | None] = []
    placeholders = set(placeholder_ids)
    for r in rows:
        n, entry = store.longest_prefix(r.ids) if store is not None else (0, None)
        if entry is not None and any(t in placeholders for t in r.ids[n:]):
            n, entry = 0, None  # the suffix carries an image: prefill the whole prompt with its pixels
        cached.append(n)
        entries.append(entry)
    wc = max(cached)
    ws = max(len(r.ids) - c for r, c in zip(rows, cached, strict=True))
    cap = wc + ws + max(r.budget for r in rows)
    n_layers = _num_layers(model)
    cache = Cache(layers=[SlabLayer(cap) for _ in range(n_layers)])
    mask = torch.zeros((b, cap), dtype=torch.long, device=device)
    ids = torch.full((b, ws), pad_token_id, dtype=torch.long, device=device)
    for i, (r, c) in enumerate(zip(rows, cached, strict=True)):
        mask[i, wc - c : wc] = 1
        suffix = r.ids[c:]
        ids[i, ws - len(suffix) :] = torch.tensor(suffix, dtype=torch.long)
        mask[i, wc + ws - len(suffix) : wc + ws] = 1
    if wc:
        _preload(cache, entries, cached, wc, b, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    inputs: dict[str, Any] = {}
    fresh = [i for i, c in enumerate(cached) if c == 0]
    for key in sorted({k for i in fresh for k in rows[i].inputs}):
        if key == "mm_token_type_ids":
            types = torch.zeros((b, ws), dtype=torch.long)
            for i in fresh:
                t = rows[i].inputs.get(key)
                if t is not None:
                    types[i, ws - len(t) :] = torch.tensor(t, dtype=torch.long)
            inputs[key] = types.to(device)
            continue
        parts = [rows[i].inputs[key] for i in fresh if key in rows[i].inputs]
        if parts:
            inputs[key] = torch.cat(parts, dim=0).to(device)
    cache_kw = _cache_kwarg(model)
    if _accepts(model, "logits_to_keep"):
        inputs["logits_to_keep"] = 1  # the prompt's other positions need no logits
    out = model(
        input_ids=ids,
        attention_mask=mask[:, : wc + ws],
        position_ids=positions[:, wc : wc + ws],
        use_cache=True,
        **{cache_kw: cache},
        **inputs,
    )
    logits = out.logits[:, -1]
    live = list(range(b))  # batch row -> request index
    tokens: list[list[int]] = [[] for _ in rows]
    logprobs: list[list[float]] = [[] for _ in rows]
    done = [False] * b
    cur = wc + ws
    last_pos = positions[:, cur - 1]
    pending_drop = 0
    while True:
        chosen, lps = step(logits, live)
        chosen_l, lps_l = chosen.tolist(), lps.tolist()
        for j, i in enumerate(live):
            if done[i]:
                continue
            tokens[i].append(chosen_l[j])
            logprobs[i].append(lps_l[j])
            if chosen_l[j] in eos_ids or len(tokens[i]) >= rows[i].budget:
                done[i] = True
                pending_drop += 1
                if store is not None:
                    _store_row(store, cache, j, mask[j, :cur], rows[i].ids + tokens[i][:-1])
        active = [j for j, i in enumerate(live) if not done[i]]
        if not active:
            break
        if pending_drop >= COMPACT_SHARE * len(live):
            keep = torch.tensor(active, dtype=torch.long, device=device)
            cache.batch_select_indices(keep)
            mask, last_pos, chosen = mask[keep], last_pos[keep], chosen[keep]
            live = [live[j] for j in active]
            pending_drop = 0
        mask[:, cur] = 1
        last_pos = last_pos + 1
        out = model(
            input_ids=chosen.unsqueeze(1),
            attention_mask=mask[:, : cur + 1],
            position_ids=last_pos.unsqueeze(1),
            use_cache=True,
            **{cache_kw: cache},
        )
        logits = out.logits[:, -1]
        cur += 1
    return list(zip(tokens, logprobs, strict=True))


def _accepts(model: Any, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def _cache_kwarg(model: Any) -> str:
    """transformers 5 renames ``past_key_values`` to ``cache`` (older releases know only the former)."""
    return "cache" if _accepts(model, "cache") else "past_key_values"


def _num_layers(model: Any) -> int:
    config = model.config
    text_cfg = getattr(config, "text_config", None) or config
    return int(text_cfg.num_hidden_layers)


def _preload(
    cache: Cache, entries: list[PrefixEntry | None], cached: list[int], wc: int, b: int, device: Any
) -> None:
    """Right-align each row's cached states in the first ``wc`` positions (zeros where padding)."""
    ref = next(e for e in entries if e is not None)
    for layer_idx, layer in enumerate(cache.layers):
        k0, v0 = ref.states[layer_idx]
        keys = k0.new_zeros((b, k0.shape[0], wc, k0.shape[-1]), device=device)
        values = v0.new_zeros((b, v0.shape[0], wc, v0.shape[-1]), device=device)
        for i, (entry, c) in enumerate(zip(entries, cached, strict=True)):
            if entry is not None:
                k, v = entry.states[layer_idx]
                keys[i, :, wc - c :] = k
                values[i, :, wc - c :] = v
        assert isinstance(layer, SlabLayer)
        layer.preload(keys, values)


def _store_row(store: PrefixStore, cache: Cache, row: int, row_mask: torch.Tensor, ids: list[int]) -> None:
    positions = row_mask.nonzero().squeeze(1)
    if len(positions) != len(ids):  # cannot happen with a consistent layout; never store a mismatch
        return
    states = []
    for layer in cache.layers:
        assert isinstance(layer, SlabLayer)
        states.append(layer.row_states(row, positions))
    store.put(ids, states)
