"""Batched, KV-cached episodes with sequential revision, judged by the project's GP verifier.

Each attempt is sampled (or taken greedily) for exactly ``ATTEMPT_LEN`` steps, with padding forced
after the end mark; the verifier's verdict becomes a fixed-width feedback appended to the context and
the model tries again, up to ``attempts`` times. Finished episodes leave the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sftrl.repro.codec import ATTEMPT_LEN, END, PAD, STOI, decode, encode, parse_attempt
from sftrl.repro.data import Hand, verdict_code
from sftrl.repro.model import TinyLM, select_cache


@dataclass
class Episode:
    """One hand played with revision: tokens, per-attempt log-probs, values, rewards and outcomes."""

    hand: Hand
    tokens: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    """Index in ``tokens`` of each attempt's first character."""
    lengths: list[int] = field(default_factory=list)
    """Sampled characters of each attempt (through the end mark); forced padding is not an action."""
    logprobs: list[list[float]] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    """Critic estimate before each attempt (at the character preceding it)."""
    rewards: list[float] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return bool(self.categories) and self.categories[-1] == "c"

    @property
    def first_success(self) -> bool:
        return bool(self.categories) and self.categories[0] == "c"


@torch.inference_mode()
def play(
    model: TinyLM,
    hands: Sequence[Hand],
    *,
    attempts: int = 3,
    temperature: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[list[Episode], int]:
    """Play every hand in one batch; returns the episodes and the number of tokens run through the model."""
    was_training = model.training
    model.eval()
    episodes = [Episode(hand=h) for h in hands]
    prompts = torch.tensor([encode(h.prompt) for h in hands], dtype=torch.long)
    for ep, row in zip(episodes, prompts.tolist(), strict=True):
        ep.tokens.extend(row)
    logits, values, cache = model(prompts)
    last_logits, last_values = logits[:, -1], values[:, -1]
    n_tokens = prompts.numel()
    active = list(range(len(hands)))
    end_id, pad_id = STOI[END], STOI[PAD]
    for turn in range(attempts):
        b = len(active)
        done = torch.zeros(b, dtype=torch.bool)
        chosen = torch.empty(b, ATTEMPT_LEN, dtype=torch.long)
        lps = torch.zeros(b, ATTEMPT_LEN)
        for ep_i, v in zip(active, last_values.tolist(), strict=True):
            episodes[ep_i].starts.append(len(episodes[ep_i].tokens))
            episodes[ep_i].values.append(v)
        for step in range(ATTEMPT_LEN):
            logp = torch.log_softmax(last_logits / (1.0 if greedy else temperature), dim=-1)
            if greedy:
                tok = logp.argmax(dim=-1)
            else:
                tok = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            tok = torch.where(done, torch.full_like(tok, pad_id), tok)
            lps[:, step] = logp.gather(1, tok[:, None]).squeeze(1)
            chosen[:, step] = tok
            done = done | (tok == end_id)
            logits, values, cache = model(tok[:, None], cache)
            last_logits, last_values = logits[:, -1], values[:, -1]
        n_tokens += b * ATTEMPT_LEN
        keep: list[int] = []
        feedback: list[list[int]] = []
        for row, ep_i in enumerate(active):
            ep = episodes[ep_i]
            ids = chosen[row].tolist()
            n = ids.index(end_id) + 1 if end_id in ids else ATTEMPT_LEN
            text = decode(ids)
            ep.tokens.extend(ids)
            ep.lengths.append(n)
            ep.logprobs.append(lps[row, :n].tolist())
            ep.texts.append(text)
            numbers, formula = parse_attempt(text)
            code, reward = verdict_code(ep.hand.state(), ep.hand.ranks, numbers or ep.hand.values, formula)
            ep.rewards.append(reward)
            ep.categories.append(code[0])
            if code[0] != "c" and turn < attempts - 1:
                keep.append(row)
                fb = encode(code)
                feedback.append(fb)
                ep.tokens.extend(fb)
        if not keep:
            break
        rows = torch.tensor(keep, dtype=torch.long)
        cache = select_cache(cache, rows)
        active = [active[r] for r in keep]
        fb_t = torch.tensor(feedback, dtype=torch.long)
        logits, values, cache = model(fb_t, cache)
        last_logits, last_values = logits[:, -1], values[:, -1]
        n_tokens += fb_t.numel()
    model.train(was_training)
    return episodes, n_tokens
