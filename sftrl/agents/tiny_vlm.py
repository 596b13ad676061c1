"""The from-scratch vision-language model of GP-VL / V-IRL-VL: `agent tiny-model --kind char-vision`.

``LlavaForConditionalGeneration`` at tiny size, saved with ``save_pretrained`` and loaded back by the
stock ``AutoModelForImageTextToText`` + ``AutoProcessor`` (``LlavaProcessor`` over a PIL
``CLIPImageProcessorPil``: no torchvision, no registered class). Parts:

* language tower: the ``char`` model's ``LlamaConfig``, tokenizer (:func:`~sftrl.agents.tiny.char_tokenizer`
  plus one ``<image>`` token, appended so every other id is the char model's) and chat template
  (:func:`~sftrl.agents.tiny.char_chat_template`, which writes ``<image>`` where a message has an image);
  ``text_model=`` copies the weights of a trained ``char`` model (e.g. a language stage-0 checkpoint);
* image encoder: a CLIP ViT, 3 layers, width 96, 8-px patches on a 64-px image (~361k parameters), and
  LLaVA's 2-layer MLP projector (~29k): a 64-px card hand becomes 64 image tokens (the CLS output is
  dropped; ``vision_feature_layer=-1`` so no encoder layer is dead weight). Images are resized, not
  cropped, to the square input (GP hands and V-IRL 2x2 grids are square).

Why LLaVA: its text tower *is* a ``LlamaForCausalLM`` config (the char model unchanged, so a text
checkpoint can seed it), one image is a fixed number of tokens, and positions are plain RoPE (the
rollout/learner log-prob gap is ~1e-7, as for text). Qwen2-VL (``--kind vision``) has a Qwen2 tower
with M-RoPE, 14-px patches merged 2x2 (sizes in multiples of 28 px, each patch copied twice in time)
and needs a custom processor class; Idefics3 / SmolVLM tile images and pixel-shuffle them: more
machinery than a 64-px image needs.

Sizes, costs and the command line: docs/backends.md (tiny VLM).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftrl.agents.tiny import (
    TinyModelError,
    _empty_out,
    char_chat_template,
    char_llama_config,
    char_tokenizer,
)

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 64
PATCH_SIZE = 8
VISION_HIDDEN = 96
VISION_LAYERS = 3
VISION_HEADS = 3  # head_dim 32


def build_char_vision_model(
    out: Path | str,
    *,
    seed: int = 0,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    intermediate: int | None = None,
    max_positions: int = 2048,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
    vision_hidden: int = VISION_HIDDEN,
    vision_layers: int = VISION_LAYERS,
    vision_heads: int = VISION_HEADS,
    text_model: Path | str | None = None,
    overwrite: bool = False,
) -> Path:
    """A random-weight tiny LLaVA (char-level Llama decoder + CLIP ViT encoder) with its processor and
    chat template, saved with ``save_pretrained``; ``text_model`` seeds the decoder (its sizes win)."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    if image_size % patch_size:
        raise TinyModelError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
    source = None
    if text_model is not None:
        source = LlamaForCausalLM.from_pretrained(text_model)
        c = source.config
        hidden, layers, heads = c.hidden_size, c.num_hidden_layers, c.num_attention_heads
        intermediate, max_positions = c.intermediate_size, c.max_position_embeddings
    out = _empty_out(out, overwrite)
    torch.manual_seed(seed)
    tokenizer = char_tokenizer(max_positions, extra_special_tokens=(IMAGE_TOKEN,))
    template = char_chat_template(IMAGE_TOKEN)
    tokenizer.chat_template = template
    text = char_llama_config(tokenizer, hidden, layers, heads, intermediate, max_positions)
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=4 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        image_size=image_size,
        patch_size=patch_size,
        num_channels=3,
        projection_dim=vision_hidden,
    )
    tokens_per_image = (image_size // patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=tokens_per_image,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    if source is not None:
        _copy_text_weights(source, model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = CLIPImageProcessorPil(
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=template,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLIP's CLS, which the "default" strategy drops again
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _copy_text_weights(source: Any, model: Any) -> None:
    """The char model's decoder weights into the VLM's language tower (the extra ``<image>`` embedding
    row keeps its random init: image features replace it before the decoder sees it)."""
    import torch

    state = dict(source.model.state_dict())
    embed = model.model.language_model.embed_tokens.weight
    src = state["embed_tokens.weight"]
    if src.shape[0] + 1 != embed.shape[0] or src.shape[1] != embed.shape[1]:
        raise TinyModelError(
            f"text model embeddings {tuple(src.shape)} do not fit the char-vision vocabulary "
            f"{tuple(embed.shape)} (is it an `agent tiny-model --kind char` model?)"
        )
    with torch.no_grad():
        merged = embed.detach().clone()
        merged[: src.shape[0]] = src
    state["embed_tokens.weight"] = merged
    model.model.language_model.load_state_dict(state)
    model.tie_weights()
