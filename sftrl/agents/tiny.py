"""Tiny random-weight models built offline (tests, demos, CPU training): `agent tiny-model`.

Nothing is downloaded. A byte-level BPE tokenizer is trained locally (``tokenizers``) on prompts and
expert replies of the project's own envs, so that the model's vocabulary covers what it will read and
write, and saved with a real chat template:

* ``text``: ``LlamaForCausalLM`` (hidden 64, 2 layers, head_dim 32 so vLLM's CPU kernels accept it) with
  TRL's Qwen2.5 chat template (tool-capable; TRL recognises it and masks all but assistant tokens).
* ``char``: ``LlamaForCausalLM`` over a character-level tokenizer (printable ASCII, one token per
  character) with a minimal chat template (``<|user|>…<|assistant|>…<|end|>``, ``{% generation %}``
  markers for TRL's assistant-only loss): the from-scratch model of ``agent repro``, which reads the
  envs' ``compact`` prompts. Sizes are arguments (default ~1M parameters).
* ``char-vision``: ``LlavaForConditionalGeneration`` whose language tower is the ``char`` model and
  whose image encoder is a tiny CLIP ViT (:mod:`sftrl.agents.tiny_vlm`).
* ``vision``: ``Qwen2VLForConditionalGeneration`` with the same tiny text tower, a 1-layer vision tower,
  TRL's Qwen2.5-VL chat template and :class:`ImageOnlyQwen2VLProcessor`: the stock Qwen2-VL processor
  also builds a video processor that needs torchvision, which cannot be installed next to a CPU torch
  build on small machines. The subclass is registered with ``AutoProcessor`` on import of this module,
  because otherwise ``AutoProcessor.from_pretrained`` silently falls back to the bare tokenizer.

Real hub models load through the same ``from_pretrained`` code (see ``sftrl.agents.hf_policy``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

Kind = Literal["text", "vision", "char", "char-vision"]

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
)
VOCAB_SIZE = 1024
HIDDEN = 64
LAYERS = 2
HEADS = 2  # head_dim = 64 / 2 = 32: vLLM's CPU attention needs head_dim >= 32
MAX_POSITIONS = 16384
# Images are resized to at most this many pixels: 224² with 14-px patches merged 2×2 -> ≤ 64 tokens.
MAX_PIXELS = 224 * 224
MIN_PIXELS = 56 * 56


class TinyModelError(ValueError):
    """The tiny model cannot be built where asked (e.g. the output directory is not empty)."""


def _corpus(seed: int) -> Iterator[str]:
    """Prompts, expert replies and verifier feedback of the project's envs (tokenizer training text)."""
    from sftrl.environments.generalpoints.env import GeneralPointsEnv

    rng = random.Random(seed)
    for split in ("id", "rule-ood"):
        for protocol in ("json", "tools"):
            env = GeneralPointsEnv(split=split, protocol=protocol)
            for _ in range(40):
                obs, _ = env.reset(seed=rng.randrange(2**31))
                yield obs.text
                yield obs.oracle.get("expert_reply", "")
                yield json.dumps(obs.oracle.get("expert_tool_call", {}))
                feedback, *_ = env.step("not an answer")
                yield feedback.text
    try:
        from sftrl.environments.virl.env import VIRLEnv

        env_v = VIRLEnv(split="id")
        for _ in range(4):
            obs, _ = env_v.reset(seed=rng.randrange(2**31))
            yield obs.text
            yield obs.oracle.get("expert_reply", "")
            feedback, *_ = env_v.step("not an answer")
            yield feedback.text
    except Exception:
        pass
    yield "You are a helpful assistant. { } [ ] ( ) + - * / = 0 1 2 3 4 5 6 7 8 9"


def train_tokenizer(seed: int = 0, vocab_size: int = VOCAB_SIZE) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on the envs' text, with chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_corpus(seed)), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in {"<|im_end|>", "<|endoftext|>"}],
        model_max_length=MAX_POSITIONS,
    )


def _text_config_kwargs(tokenizer: Any) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
        "tie_word_embeddings": True,
    }


CHAR_SPECIAL_TOKENS = ("<|pad|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>")


def char_chat_template(image_token: str | None = None) -> str:
    """The char model's chat template; with ``image_token``, each ``{"type": "image"}`` content part
    becomes that placeholder (the processor expands it into the image's tokens), in place."""
    if image_token is None:
        content = (
            "{%- set c = m['content'] if m['content'] is string else "
            "(m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('')) -%}"
        )
    else:
        content = (
            "{%- set ns = namespace(c='') -%}"
            "{%- if m['content'] is string -%}{%- set ns.c = m['content'] -%}"
            "{%- else -%}{%- for p in m['content'] -%}"
            "{%- if p['type'] == 'image' -%}{%- set ns.c = ns.c + '" + image_token + "' -%}"
            "{%- elif p['type'] == 'text' -%}{%- set ns.c = ns.c + p['text'] -%}"
            "{%- endif -%}{%- endfor -%}{%- endif -%}"
            "{%- set c = ns.c -%}"
        )
    return (
        "{%- for m in messages -%}" + content + "{%- if m['role'] == 'assistant' -%}"
        "<|assistant|>{% generation %}{{ c }}<|end|>{% endgeneration %}"
        "{%- elif m['role'] == 'system' -%}<|system|>{{ c }}"
        "{%- else -%}<|user|>{{ c }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
    )


CHAR_CHAT_TEMPLATE = char_chat_template()
"""One token of overhead per turn; tool results (role ``tool``) read as user turns."""


def char_tokenizer(max_length: int = 2048, extra_special_tokens: Sequence[str] = ()) -> Any:
    """A character-level ``PreTrainedTokenizerFast``: printable ASCII plus the chat special tokens;
    any other character becomes ``?``. ``extra_special_tokens`` (e.g. an image placeholder) come last,
    so every other token keeps the id it has in the plain char model."""
    import string

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
    vocab = {t: i for i, t in enumerate([*CHAR_SPECIAL_TOKENS, *chars, *extra_special_tokens])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|end|>",
        additional_special_tokens=[*CHAR_SPECIAL_TOKENS[2:], *extra_special_tokens],
        model_max_length=max_length,
    )
    tokenizer.chat_template = CHAR_CHAT_TEMPLATE
    return tokenizer


def build_char_model(
    out: Path | str,
    *,
    seed: int = 0,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    intermediate: int | None = None,
    max_positions: int = 1024,
    overwrite: bool = False,
) -> Path:
    """A random-weight character-level Llama (``hidden``/``heads`` >= 32 keeps vLLM's CPU kernels
    usable) with :func:`char_tokenizer`, saved with ``save_pretrained``."""
    import torch
    from transformers import LlamaForCausalLM

    out = _empty_out(out, overwrite)
    torch.manual_seed(seed)
    tokenizer = char_tokenizer(max_positions)
    model = LlamaForCausalLM(char_llama_config(tokenizer, hidden, layers, heads, intermediate, max_positions))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def char_llama_config(
    tokenizer: Any, hidden: int, layers: int, heads: int, intermediate: int | None, max_positions: int
) -> Any:
    """The decoder config of the char models (``char`` and the text tower of ``char-vision``)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )


def _empty_out(out: Path | str, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TinyModelError(f"{out} is not empty; choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return out


def _image_only_processor_class() -> type:
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """Qwen2-VL's processor without the video processor (which needs torchvision)."""

        def __init__(
            self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kw
        ):
            kw.pop("video_processor", None)
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kw)

    ImageOnlyQwen2VLProcessor.__name__ = ImageOnlyQwen2VLProcessor.__qualname__ = "ImageOnlyQwen2VLProcessor"
    return ImageOnlyQwen2VLProcessor


_PROCESSOR_CLASS: type | None = None


def register_processors() -> type:
    """Make ``AutoProcessor.from_pretrained`` resolve the image-only Qwen2-VL processor class."""
    global _PROCESSOR_CLASS
    if _PROCESSOR_CLASS is None:
        import transformers
        from transformers import AutoProcessor, Qwen2VLConfig

        cls = _image_only_processor_class()
        AutoProcessor.register(Qwen2VLConfig, cls, exist_ok=True)
        # from_pretrained resolves ``processor_class`` by name through the transformers namespace.
        transformers.ImageOnlyQwen2VLProcessor = cls  # type: ignore[attr-defined]
        _PROCESSOR_CLASS = cls
    return _PROCESSOR_CLASS


def build_tiny_model(
    kind: Kind, out: Path | str, seed: int = 0, *, overwrite: bool = False, **sizes: int
) -> Path:
    """Build a tiny random-weight ``kind`` model with tokenizer, chat template (+ processor) in ``out``."""
    import torch
    from trl.chat_template_utils import qwen2_5_chat_template, qwen2_5_vl_chat_template

    if kind == "char":
        return build_char_model(out, seed=seed, overwrite=overwrite, **sizes)
    if kind == "char-vision":
        from sftrl.agents.tiny_vlm import build_char_vision_model

        return build_char_vision_model(out, seed=seed, overwrite=overwrite, **sizes)
    if kind not in ("text", "vision"):
        raise TinyModelError(f"unknown tiny model kind {kind!r}; choose text, vision, char or char-vision")
    out = _empty_out(out, overwrite)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(seed)
    if kind == "text":
        from transformers import LlamaConfig, LlamaForCausalLM

        tokenizer.chat_template = qwen2_5_chat_template
        model = LlamaForCausalLM(LlamaConfig(**_text_config_kwargs(tokenizer)))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer.chat_template = qwen2_5_vl_chat_template
    text = _text_config_kwargs(tokenizer)
    text["rope_scaling"] = {"type": "mrope", "mrope_section": [4, 6, 6]}  # sums to head_dim / 2
    config = Qwen2VLConfig(
        text_config=text,
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": HIDDEN,
            "num_heads": 1,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
    )
    processor = register_processors()(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=qwen2_5_vl_chat_template
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
