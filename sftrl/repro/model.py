"""A tiny character-level decoder (pre-LN GPT) with a value head and KV-cached forward passes.

Plain torch, so a 0.8M-parameter model runs fast on one CPU thread; ``forward`` takes and returns a
per-layer key/value cache so sampling costs one token's compute per step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sftrl.repro.codec import MAX_LEN, VOCAB_SIZE

Cache = list[tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    vocab_size: int = VOCAB_SIZE
    max_len: int = MAX_LEN


class _Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(), nn.Linear(4 * cfg.d_model, cfg.d_model)
        )

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        n_past = k.shape[2] - t
        if n_past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif t == 1:
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # a chunk after a cache: row i sees the past and chunk positions <= i
            mask = torch.ones(t, n_past + t, dtype=torch.bool).tril(diagonal=n_past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        x = x + self.mlp(self.ln2(x))
        return x, (k, v)


class TinyLM(nn.Module):
    """Decoder-only LM over the codec's characters, plus a scalar value head for PPO."""

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ModelConfig()
        c = self.cfg
        self.tok = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = nn.Embedding(c.max_len, c.d_model)
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.value_head = nn.Linear(c.d_model, 1)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def n_params(self) -> int:
        """Parameters that count for FLOPs (the LM trunk and head, not the value head)."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("value_head"))

    def forward(self, idx: Tensor, cache: Cache | None = None) -> tuple[Tensor, Tensor, Cache]:
        """(logits, values, new cache) for tokens ``idx`` (B, T) that follow ``cache``."""
        start = 0 if cache is None else cache[0][0].shape[2]
        pos = torch.arange(start, start + idx.shape[1])
        x = self.tok(idx) + self.pos(pos)
        new: Cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if cache is None else cache[i])
            new.append(kv)
        h = self.ln_f(x)
        return self.head(h), self.value_head(h).squeeze(-1), new

    # -- checkpoints -----------------------------------------------------------------------------
    def save(self, path: Path, *, half: bool = True, **meta: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # fp16 halves the shipped file; the model is trained and run in fp32.
        state = {k: v.half() if half and v.is_floating_point() else v for k, v in self.state_dict().items()}
        torch.save({"config": asdict(self.cfg), "state": state, "meta": meta}, path)

    @classmethod
    def load(cls, path: Path) -> tuple[TinyLM, dict[str, Any]]:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model = cls(ModelConfig(**blob["config"]))
        model.load_state_dict({k: v.float() for k, v in blob["state"].items()})
        return model, dict(blob.get("meta", {}))


def select_cache(cache: Cache, rows: Tensor) -> Cache:
    """Keep only batch ``rows`` of a cache (episodes that finished are dropped from sampling)."""
    return [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache]
