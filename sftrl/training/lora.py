"""LoRA for ``agent train rl`` (peft): adapters on the policy model, the PPO value head stays full.

Only the adapters (and the value head, a separate full layer of the learner) are trained, so the
optimizer holds state for them alone. Checkpoints hold the adapters (``adapter_model.safetensors``);
the final ``OUT`` holds them in ``OUT/adapter`` and, with ``--merge``, the merged full model in ``OUT``
itself (loadable by ``agent run --policy hf``); without ``--merge`` ``OUT`` is a peft adapter dir.
Dropout is off: the learner's consistency check needs scoring to be deterministic.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"


def lora_config(r: int, alpha: int | None, targets: list[str]) -> Any:
    from peft import LoraConfig

    target: Any = targets[0] if targets == ["all-linear"] else list(targets)
    return LoraConfig(r=r, lora_alpha=alpha or 2 * r, target_modules=target, lora_dropout=0.0, bias="none")


def apply_lora(policy: Any, r: int, alpha: int | None, targets: list[str], adapter: Path | None) -> None:
    """Wrap ``policy.model`` with LoRA adapters: fresh ones, or those saved in ``adapter`` (resume)."""
    from peft import PeftModel, get_peft_model

    if adapter is not None:
        if not (adapter / ADAPTER_CONFIG).exists():
            raise ValueError(f"{adapter} holds no LoRA adapter: resume a LoRA run with the same --lora-r")
        policy.model = PeftModel.from_pretrained(policy.model, str(adapter), is_trainable=True)
    else:
        policy.model = get_peft_model(policy.model, lora_config(r, alpha, targets))
    policy.model.eval()


def save_final(policy: Any, out: Path, merge: bool) -> None:
    """Adapters to ``OUT/adapter`` and ``OUT`` (or, with ``merge``, the merged model to ``OUT``)."""
    policy.model.save_pretrained(str(out / ADAPTER_DIR))
    model = policy.model.merge_and_unload() if merge else policy.model
    model.save_pretrained(str(out))
    policy.processor.save_pretrained(str(out))


def is_lora(model: Any) -> bool:
    """Whether ``model`` is a peft model (adapters on a base model). Without peft imported it cannot
    be one: environments without peft (vLLM's own) push plain models."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def merged_state_dict(model: Any) -> tuple[Any, dict[str, Any]]:
    """(the base transformers model, its state dict in checkpoint format with the adapters merged in).

    What vLLM loads when it serves a LoRA run's rollouts: every adapted weight is ``W + delta`` (peft's
    ``get_delta_weight``, the same sum the forward pass computes), every other weight is the base one,
    under the base model's own names (no ``base_layer`` / ``lora_*`` keys). The live model is not
    touched: no merge / unmerge round trip whose rounding would drift the base weights over a run.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas: dict[str, Any] = {}
    with torch.no_grad():
        for name, module in base.named_modules():
            if not isinstance(module, LoraLayer) or getattr(module, "merged", False):
                continue
            for adapter in module.active_adapters:
                if adapter in module.lora_A or adapter in getattr(module, "lora_embedding_A", {}):
                    delta = module.get_delta_weight(adapter)
                    deltas[name] = deltas[name] + delta if name in deltas else delta
        state: dict[str, Any] = {}
        for key, value in base.state_dict().items():
            if ".lora_" in key:
                continue
            key = key.replace(".base_layer.", ".")
            module_name = key.rsplit(".", 1)[0]
            if key.endswith(".weight") and module_name in deltas:
                value = value + deltas[module_name].to(value.dtype)
            state[key] = value.detach()
    return base, state


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
