"""The ``hf`` policy: a transformers model in-process, with dynamic batching, token ids and log-probs.

Concurrent episodes' requests are gathered into one batch (run in a worker thread so envs keep
stepping meanwhile) and decoded by the KV-cached loop of :mod:`sftrl.agents.hf_decode` (a revision
turn reuses the states of the turn before it; finished rows leave the batch), or by transformers'
``generate`` for models whose positions that loop cannot count (multimodal RoPE). Sampling happens in
:class:`RowSampler`, with one ``torch.Generator`` per row: a reply depends on its own seed only,
never on which other requests shared its batch, and its log-probs are exactly
``log_softmax(logits / temperature)`` at the sampled tokens — what the RL learner recomputes, so
rollout/trainer consistency can be checked.

Text models load with ``AutoModelForCausalLM`` + ``AutoTokenizer``; vision-language models with
``AutoModelForImageTextToText`` + ``AutoProcessor`` (Qwen2-VL / Qwen2.5-VL, Idefics3, LLaVA, …).
The same loading code serves local tiny models (:mod:`sftrl.agents.tiny`) and hub models.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import BaseTool

from sftrl.agents.messages import decode_image, message_text, record_to_message
from sftrl.agents.model_source import ModelSourceError, load_error, model_load_kwargs
from sftrl.agents.policy import Reply, SamplingParams
from sftrl.agents.tools import openai_tools, parse_hermes_tool_calls
from sftrl.environments.base import Observation

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}
_PLACEHOLDER_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "image_token_index")
_OPTIONS = {
    "device",
    "dtype",
    "max_batch_size",
    "batch_wait_s",
    "revision",
    "trust_remote_code",
    "seed",
    "prefix_cache_mb",
}


DEFAULT_PREFIX_CACHE_MB = 256.0
"""Bound of the states kept for prefix reuse across turns (:class:`sftrl.agents.hf_decode.PrefixStore`)."""


class HFPolicyError(ValueError):
    """The model cannot be loaded or used as asked (missing files, bad option)."""


def to_chat(messages: Sequence[BaseMessage], vision: bool) -> tuple[list[dict[str, Any]], list[Any]]:
    """Langchain messages -> (chat-template messages, the PIL images in order of appearance).

    Vision templates take content lists with ``{"type": "image"}`` placeholders; text templates want
    plain strings (images, if any, are dropped: a text model cannot see them).
    """
    chat: list[dict[str, Any]] = []
    images: list[Any] = []
    for m in messages:
        role = _ROLES.get(m.type, m.type)
        if vision and not isinstance(m.content, str):
            parts: list[dict[str, Any]] = []
            for block in m.content:
                if isinstance(block, str):
                    parts.append({"type": "text", "text": block})
                elif block.get("type") == "image" and "base64" in block:
                    images.append(decode_image(block))
                    parts.append({"type": "image"})
                elif block.get("type") == "text":
                    parts.append({"type": "text", "text": str(block.get("text", ""))})
            entry: dict[str, Any] = {"role": role, "content": parts}
        else:
            entry = {"role": role, "content": message_text(m)}
        if isinstance(m, AIMessage) and m.tool_calls:
            entry["tool_calls"] = [
                {"type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
                for c in m.tool_calls
            ]
        if isinstance(m, ToolMessage):
            entry["tool_call_id"] = m.tool_call_id
        chat.append(entry)
    return chat, images


class RowSampler:
    """Logits processor sampling each row with its own generator, temperature and top-p.

    Returns scores that put all mass on the chosen token, so ``generate`` runs greedy on top of it;
    records each row's ``log_softmax(logits / temperature)`` of the chosen token. Sampling is
    Gumbel-max over the whole batch at once (exact for the tempered, top-p-truncated distribution):
    the only per-row work is drawing each row's uniform noise from its own generator, so a row's reply
    depends on its seed alone and a step costs a few batched tensor ops, not per-row Python.
    Temperature <= 0 means greedy (log-probs then at temperature 1).
    """

    def __init__(
        self,
        seeds: Sequence[int],
        temperatures: Sequence[float],
        top_ps: Sequence[float],
        suppressed: Sequence[int] = (),
    ) -> None:
        import torch

        self.suppressed = sorted(set(suppressed))
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        temps = torch.tensor([float(t) for t in temperatures], dtype=torch.float32)
        self.greedy = temps <= 0
        self.temps = torch.where(self.greedy, torch.ones_like(temps), temps).unsqueeze(1)
        self.top_ps = torch.tensor([float(p) for p in top_ps], dtype=torch.float32)
        self._greedy_rows = self.greedy.tolist()
        self._steps: list[Any] = []

    @property
    def logprobs(self) -> list[list[float]]:
        """Per row, the log-prob of each token chosen so far (``generate`` path)."""
        import torch

        if not self._steps:
            return [[] for _ in self.generators]
        return torch.stack(self._steps, dim=1).tolist()

    def step(self, logits: Any, rows: Sequence[int]) -> tuple[Any, Any]:
        """Choose the next token of each of ``rows`` (request indices) from their ``[len(rows), V]``
        logits; returns the tokens and their log-probs. Each row draws noise from its own generator."""
        import torch

        logits = logits.float()
        if self.suppressed:
            logits[:, self.suppressed] = float("-inf")
        index = torch.tensor(list(rows), dtype=torch.long)
        temps = self.temps[index].to(logits.device)
        logp = torch.log_softmax(logits / temps, dim=-1)
        tokens = torch.argmax(logits, dim=-1)
        sampled = [j for j, i in enumerate(rows) if not self._greedy_rows[i]]
        if sampled:
            lp = logp[sampled]
            top_p = self.top_ps[index[sampled]].to(logits.device)
            if bool((top_p < 1.0).any()):
                probs = lp.exp()
                sorted_p, order = torch.sort(probs, dim=-1, descending=True)
                keep_sorted = (torch.cumsum(sorted_p, -1) - sorted_p) < top_p.unsqueeze(1)
                keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
                lp = lp.masked_fill(~keep, float("-inf"))
            vocab = logits.shape[-1]
            u = torch.stack([torch.rand(vocab, generator=self.generators[rows[j]]) for j in sampled])
            gumbel = -torch.log(-torch.log(u.clamp(min=1e-20)))
            tokens[sampled] = torch.argmax(lp + gumbel.to(lp.device), dim=-1)
        return tokens, logp.gather(1, tokens.unsqueeze(1)).squeeze(1)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """Logits-processor form for ``generate``: all mass on the chosen token."""
        import torch

        tokens, lps = self.step(scores, range(len(self.generators)))
        self._steps.append(lps.cpu())
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, tokens.unsqueeze(1), 0.0)
        return out


@dataclass
class _Request:
    chat: list[dict[str, Any]]
    images: list[Any]
    tools: list[dict[str, Any]] | None
    sampling: SamplingParams
    future: asyncio.Future[Reply]
    seed: int = 0
    inputs: dict[str, Any] = field(default_factory=dict)


class HFPolicy:
    """A transformers model as a policy (CPU training path, tests, small GPU runs)."""

    name = "hf"

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        max_batch_size: int = 8,
        batch_wait_s: float = 0.002,
        revision: str | None = None,
        trust_remote_code: bool = False,
        seed: int = 0,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
    ) -> None:
        import random

        try:  # before the heavy imports: a mistyped path fails at once
            source = model_load_kwargs(str(model))
        except ModelSourceError as exc:
            raise HFPolicyError(str(exc)) from None

        import torch
        from transformers import AutoConfig
        from transformers.utils import logging as hf_logging

        from sftrl.agents.tiny import register_processors

        # Per-load tqdm bars would interleave with the run's own progress display.
        hf_logging.disable_progress_bar()

        if max_batch_size < 1:
            raise HFPolicyError("max_batch_size must be >= 1")
        self.model_name = str(model)
        self.device = device
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self._rng = random.Random(seed)
        kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code, **source}
        try:
            config = AutoConfig.from_pretrained(self.model_name, **kwargs)
        except (OSError, ValueError) as exc:
            raise HFPolicyError(load_error(self.model_name, exc, source)) from exc
        self.vision = getattr(config, "vision_config", None) is not None
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        if self.vision:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            register_processors()
            self.processor = AutoProcessor.from_pretrained(self.model_name, **kwargs)
            self.tokenizer = self.processor.tokenizer
            self.model = AutoModelForImageTextToText.from_pretrained(
                self.model_name, dtype=torch_dtype, **kwargs
            )
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.model_name, **kwargs)
            self.processor = self.tokenizer
            self.model = AutoModelForCausalLM.from_pretrained(self.model_name, dtype=torch_dtype, **kwargs)
        self._setup(config, device, prefix_cache_mb=prefix_cache_mb)
        self.revision = revision or self.revision

    @classmethod
    def from_model(
        cls,
        model: Any,
        processor: Any,
        *,
        name: str = "in-memory",
        max_batch_size: int = 8,
        batch_wait_s: float = 0.002,
        seed: int = 0,
        prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB,
    ) -> HFPolicy:
        """A policy over an already loaded model and its tokenizer/processor (a trainer's live model:
        periodic evaluation during ``agent train sft|rl`` plays episodes with the weights being trained)."""
        import random

        if max_batch_size < 1:
            raise HFPolicyError("max_batch_size must be >= 1")
        self = cls.__new__(cls)
        self.model_name = name
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self._rng = random.Random(seed)
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.vision = getattr(model.config, "vision_config", None) is not None
        self._setup(
            model.config, str(next(model.parameters()).device), move=False, prefix_cache_mb=prefix_cache_mb
        )
        return self

    def _setup(
        self, config: Any, device: str, move: bool = True, prefix_cache_mb: float = DEFAULT_PREFIX_CACHE_MB
    ) -> None:
        from sftrl.agents.hf_decode import PrefixStore, supports_fast_decode

        self.device = device
        if move:
            self.model.to(device).eval()
        if self.tokenizer.chat_template is None and getattr(self.processor, "chat_template", None) is None:
            raise HFPolicyError(
                f"{self.model_name} has no chat template (an instruction-tuned model is needed)"
            )
        self.revision = getattr(config, "_commit_hash", None)
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        text_cfg = getattr(config, "text_config", None) or config
        # Image/video placeholders are the processor's to place: a sampled one would make the reply
        # unscorable (more image tokens than image features), so neither sampler nor learner allows them.
        self.suppressed_token_ids = sorted(
            {
                int(i)
                for i in (getattr(config, k, None) for k in _PLACEHOLDER_IDS)
                if isinstance(i, int) and i >= 0
            }
        )
        self.max_positions = int(getattr(text_cfg, "max_position_embeddings", 0) or 0) or None
        self._pending: list[_Request] = []
        self._task: asyncio.Task[None] | None = None
        if prefix_cache_mb < 0:
            raise HFPolicyError("prefix_cache_mb must be >= 0")
        self.fast_decode = supports_fast_decode(self.model)
        self.prefix_store = PrefixStore(int(prefix_cache_mb * 2**20)) if prefix_cache_mb > 0 else None
        self.batches: list[int] = []
        """Sizes of the generate calls made so far (dynamic batching, for benchmarks and tests)."""
        self.autocast_dtype: Any = None
        """A torch dtype to generate under ``torch.autocast`` in (a trainer's mixed precision: the
        learner scores under it, so its sampler does too); None: the model's own dtype."""

    @classmethod
    def from_run_config(cls, run: Any) -> HFPolicy:
        options = dict(run.policy_options)
        unknown = set(options) - _OPTIONS
        if unknown:
            raise HFPolicyError(
                f"unknown hf policy option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(_OPTIONS))}"
            )
        options.setdefault("seed", run.seed)
        # Batch as many requests as the run has episodes in flight (the loop serves them together).
        options.setdefault("max_batch_size", run.concurrency)
        return cls(run.model, **options)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else next(iter(self.eos_ids)))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "hf",
            "model": self.model_name,
            "revision": self.revision,
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "vision": self.vision,
        }

    def save_pretrained(self, path: str | Path, state_dict: dict[str, Any] | None = None) -> None:
        """The model and its processor, as ``from_pretrained`` loads them; ``state_dict`` (full
        tensors by this model's names): weights to write instead of the model's own (e.g. gathered
        from FSDP shards, whose module keeps the config and dtype)."""
        self.model.save_pretrained(path, state_dict=state_dict)
        self.processor.save_pretrained(path)

    # -- encoding ----------------------------------------------------------------------------------
    def encode_chat(
        self, chat: list[dict[str, Any]], images: list[Any], tools: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Prompt ids (and image tensors) exactly as generation sees them: chat template + processor."""
        template_owner = self.processor if self.vision else self.tokenizer
        text = template_owner.apply_chat_template(
            chat, tools=tools, add_generation_prompt=True, tokenize=False
        )
        if self.vision and images:
            enc = self.processor(text=[text], images=images, return_tensors="pt")
            out: dict[str, Any] = {"input_ids": enc["input_ids"][0].tolist()}
            if "mm_token_type_ids" in enc:
                out["mm_token_type_ids"] = enc["mm_token_type_ids"][0].tolist()
            for key in ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes"):
                if key in enc:
                    out[key] = enc[key]
            return out
        return {"input_ids": self.tokenizer(text, add_special_tokens=False)["input_ids"]}

    def encode_transition(self, transition: Any) -> dict[str, Any]:
        """Model inputs of a logged transition's prompt (images read back from its run directory)."""
        run_dir = Path(transition.run_dir)
        messages = [
            record_to_message(r, load_image=lambda p: (run_dir / p).read_bytes()) for r in transition.prompt
        ]
        chat, images = to_chat(messages, self.vision)
        return self.encode_chat(chat, images, transition.extra.get("tools"))

    # -- generation --------------------------------------------------------------------------------
    async def generate(
        self,
        messages: Sequence[BaseMessage],
        sampling: SamplingParams,
        *,
        observation: Observation | None = None,
        tools: Sequence[BaseTool] | None = None,
    ) -> Reply:
        chat, images = to_chat(messages, self.vision)
        loop = asyncio.get_running_loop()
        seed = sampling.seed if sampling.seed is not None else self._rng.randrange(2**31)
        request = _Request(
            chat=chat,
            images=images,
            tools=openai_tools(list(tools)) if tools else None,
            sampling=sampling,
            future=loop.create_future(),
            seed=seed,
        )
        self._pending.append(request)
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._drain())
        return await request.future

    async def _drain(self) -> None:
        """Serve pending requests in batches until none is left (one generate at a time)."""
        while self._pending:
            # Yield once so that every episode ready to ask joins this batch.
            await asyncio.sleep(self.batch_wait_s)
            batch = self._pending[: self.max_batch_size]
            del self._pending[: len(batch)]
            try:
                replies = await asyncio.to_thread(self._generate_batch, batch)
            except Exception as exc:
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            for r, reply in zip(batch, replies, strict=True):
                if not r.future.done():
                    r.future.set_result(reply)

    def _generate_batch(self, batch: list[_Request]) -> list[Reply]:
        import torch

        encs = [self.encode_chat(r.chat, r.images, r.tools) for r in batch]
        replies: list[Reply | None] = [None] * len(batch)
        live: list[int] = []
        budgets: list[int] = []
        for i, (r, e) in enumerate(zip(batch, encs, strict=True)):
            budget = r.sampling.max_new_tokens
            if self.max_positions is not None:
                budget = min(budget, self.max_positions - len(e["input_ids"]))
            if budget <= 0:
                # The prompt alone fills the context window: an empty reply the verifier will score.
                replies[i] = Reply(
                    text="", token_ids=[], logprobs=[], finish_reason="length", model=self.model_name
                )
            else:
                live.append(i)
                budgets.append(budget)
        if live:
            sampler = RowSampler(
                [batch[i].seed for i in live],
                [batch[i].sampling.temperature for i in live],
                [batch[i].sampling.top_p for i in live],
                self.suppressed_token_ids,
            )
            precision = (
                torch.autocast(next(self.model.parameters()).device.type, dtype=self.autocast_dtype)
                if self.autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with torch.no_grad(), precision:
                if self.fast_decode:
                    outs = self._decode(sampler, [encs[i] for i in live], budgets)
                else:
                    outs = self._generate(sampler, [encs[i] for i in live], budgets)
            for row, i in enumerate(live):
                tokens, logprobs = outs[row]
                replies[i] = self._reply(tokens, logprobs, budgets[row], batch[i])
        self.batches.append(len(live))
        return [r for r in replies if r is not None]

    def _decode(
        self, sampler: RowSampler, encs: list[dict[str, Any]], budgets: list[int]
    ) -> list[tuple[list[int], list[float]]]:
        """The KV-cached loop (:mod:`sftrl.agents.hf_decode`): prefix reuse, no per-step copies."""
        from sftrl.agents.hf_decode import Row, decode, weights_version

        if self.prefix_store is not None:
            self.prefix_store.check_weights(weights_version(self.model))
        rows = [
            Row(
                ids=list(e["input_ids"]),
                budget=budget,
                inputs={k: v for k, v in e.items() if k != "input_ids"},
            )
            for e, budget in zip(encs, budgets, strict=True)
        ]
        return decode(
            self.model,
            rows,
            sampler.step,
            self.eos_ids,
            self.pad_token_id,
            self.prefix_store,
            placeholder_ids=self.suppressed_token_ids,
        )

    def _generate(
        self, sampler: RowSampler, encs: list[dict[str, Any]], budgets: list[int]
    ) -> list[tuple[list[int], list[float]]]:
        """transformers' ``generate`` with the row sampler as logits processor (models whose positions
        the loop cannot count itself, e.g. multimodal RoPE)."""
        import torch
        from transformers import GenerationConfig

        width = max(len(e["input_ids"]) for e in encs)
        ids = torch.full((len(encs), width), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(encs), width), dtype=torch.long)
        for row, e in enumerate(encs):
            seq = e["input_ids"]
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)  # left padding
            attn[row, width - len(seq) :] = 1
        # The model's own device, not the load option: a trainer may have moved it (accelerate's prepare).
        device = next(self.model.parameters()).device
        inputs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": attn.to(device)}
        if any("mm_token_type_ids" in e for e in encs):
            types = torch.zeros_like(ids)
            for row, e in enumerate(encs):
                t = e.get("mm_token_type_ids") or [0] * len(e["input_ids"])
                types[row, width - len(t) :] = torch.tensor(t, dtype=torch.long)
            inputs["mm_token_type_ids"] = types.to(device)
        for key in ("pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes"):
            parts = [e[key] for e in encs if key in e]
            if parts:
                inputs[key] = torch.cat(parts, dim=0).to(device)
        gen_cfg = GenerationConfig(
            max_new_tokens=max(budgets),
            do_sample=False,
            use_cache=True,  # a trainer may have switched the model's config default off
            pad_token_id=self.pad_token_id,
            eos_token_id=sorted(self.eos_ids),
        )
        out = self.model.generate(**inputs, generation_config=gen_cfg, logits_processor=[sampler])
        new = out[:, width:].tolist()
        return list(zip(new, sampler.logprobs, strict=True))

    def _reply(self, tokens: list[int], logprobs: list[float], budget: int, request: _Request) -> Reply:
        finish = "length"
        cut = min(len(tokens), budget)
        for j, tok in enumerate(tokens[:budget]):
            if tok in self.eos_ids:
                cut, finish = j + 1, "stop"
                break
        tokens = tokens[:cut]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        tool_calls = None
        if request.tools:
            # The same parser, on the same text, as vllm-offline (special tokens kept: a tokenizer may
            # mark <tool_call> special; the stop token is left out, as vLLM leaves it out).
            body = tokens[:-1] if finish == "stop" else tokens
            text, tool_calls = parse_hermes_tool_calls(self.tokenizer.decode(body, skip_special_tokens=False))
        return Reply(
            text=text,
            token_ids=tokens,
            logprobs=logprobs[:cut],
            finish_reason="tool_calls" if tool_calls else finish,
            model=self.model_name,
            usage={"completion_tokens": len(tokens)},
            tool_calls=tool_calls,
            extra={"seed": request.seed},
        )
