"""A seeded generator of hostile model replies, and a policy that sends them (tests and benchmarks).

Each reply starts from a well-formed answer for the observation (the env's own ``random_reply``) and
is then mangled: byte-level mutations, truncation, lone surrogates, control and bidi characters,
code-injection payloads (which would create a sentinel file if anything executed them), absurd
numbers, deep nesting, huge texts, and NaN/±inf/huge log-probs, odd token ids, finish reasons and
tool calls. Every draw is a function of the seed and the call number, so (one episode at a time) runs repeat.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage

from sftrl.agents.policy import Reply, SamplingParams
from sftrl.environments.base import Observation
from sftrl.environments.registry import env_class


def payloads(sentinel: Path) -> list[str]:
    """Replies that would touch ``sentinel`` if any component evaluated or executed model text."""
    s = str(sentinel)
    return [
        f"__import__('pathlib').Path({s!r}).touch()",
        f"{{\"formula\": \"__import__('os').system('touch {s}')\"}}",
        f"{{{{ cycler.__init__.__globals__.os.system('touch {s}') }}}}",
        f"$(touch {s})`touch {s}`",
        '{"action": "forward()", "x": "{0.__class__.__base__.__subclasses__()}"}',
        f"exec(\"open({s!r}, 'w')\")",
    ]


_ODD = [
    "\ud800",
    "\udfff",
    "\ud83d",
    "\x00",
    "\x1b[2J",
    "\u202e",
    "\ufeff",
    "\u200b",
    "\r\n",
    "\\u0000",
    "💥",
    "NaN",
    "Infinity",
    "1e309",
    "-0",
    "9" * 5000,
    "9**9**9**9",
    "1/0",
    "(" * 500,
    "[" * 2000,
    '{"a":' * 300,
    "}}}",
    "```json",
    "<tool_call>",
    "</tool_call>",
    '"formula": "24"',
    '"action": "stop()"',
    "forward(-)",
    "turn_direction(west.)",
]


def mutate(text: str, rng: random.Random, sentinel: Path) -> str:
    """One hostile variant of ``text``."""
    kind = rng.randrange(12)
    if kind == 0:
        return text  # well-formed: the verifier must still judge these right
    if kind == 1:  # byte flips
        chars = list(text)
        for _ in range(rng.randint(1, 8)):
            if chars:
                chars[rng.randrange(len(chars))] = chr(rng.randrange(0x20, 0x2FF))
        return "".join(chars)
    if kind == 2:  # truncation
        return text[: rng.randrange(len(text) + 1)]
    if kind == 3:  # odd tokens inserted anywhere
        out = text
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(out) + 1)
            out = out[:i] + rng.choice(_ODD) + out[i:]
        return out
    if kind == 4:
        return rng.choice(payloads(sentinel))
    if kind == 5:  # random unicode, surrogates included
        return "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(0, 64)))
    if kind == 6:
        return text * rng.randint(2, 50)
    if kind == 7:  # a big reply (a model that does not stop)
        return text + "x" * rng.choice((10_000, 100_000, 300_000))
    if kind == 8:  # the answer wrapped in chatter or code fences
        return f"Sure! ```json\n{text}\n``` {rng.choice(_ODD)} done."
    if kind == 9:
        return rng.choice(["", " ", "\n", "null", "[]", "{}", "true", '"str"', "0", "-1"])
    if kind == 10:  # a JSON value replaced by something of the wrong type
        return text.replace('"', "", rng.randint(1, 4)).replace(":", ": [", 1)
    return text[::-1]


_FLOATS = [math.nan, math.inf, -math.inf, -1e308, 0.0, -0.0, 5e-324, 1e300]


class FuzzPolicy:
    """Sends mangled replies and remembers their texts (``sent``)."""

    name = "fuzz"

    def __init__(self, seed: int, sentinel: Path, *, tool_rate: float = 0.2) -> None:
        self.seed = seed
        self.sentinel = sentinel
        self.tool_rate = tool_rate
        self.sent: list[str] = []
        """Every reply text, in call order (one episode at a time: the log's turn order)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "fuzz", "seed": self.seed}

    def _rng(self) -> random.Random:
        # Drawn from the seed and the call number, not the conversation: feedback quotes replies, and
        # replies quote the sentinel's temporary path, which must not steer the draws.
        digest = hashlib.sha256(f"{self.seed}:{len(self.sent)}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    async def generate(
        self,
        messages: Sequence[BaseMessage],
        sampling: SamplingParams,
        *,
        observation: Observation | None = None,
        tools: Sequence[Any] | None = None,
    ) -> Reply:
        assert observation is not None
        rng = self._rng()
        base = env_class(observation.env_id).random_reply(observation, rng)
        text = mutate(base, rng, self.sentinel)
        n = rng.randint(0, 6)
        logprobs = [rng.choice(_FLOATS) if rng.random() < 0.3 else -rng.random() for _ in range(n)]
        token_ids = [rng.choice((0, -1, 2**31 - 1, rng.randrange(50_000))) for _ in range(n)]
        tool_calls = None
        if tools and rng.random() < self.tool_rate:
            name = rng.choice([getattr(t, "name", "x") for t in tools] + ["no_such_tool", "", "\ud800"])
            args: Any = rng.choice(
                [{}, {"formula": text}, {"action": text}, text, "{not json", {"a": [[[[]]]]}, {"\ud800": 1}]
            )
            tool_calls = [{"name": name, "args": args, "id": rng.choice(["c1", "", "\udfff", "x" * 300])}]
        self.sent.append(text)
        return Reply(
            text=text,
            token_ids=token_ids or None,
            logprobs=logprobs or None,
            finish_reason=rng.choice(["stop", "length", None, "\ud800", "x" * 100]),
            usage=rng.choice([None, {"prompt_tokens": -5, "completion_tokens": 2**62}]),
            tool_calls=tool_calls,
        )
