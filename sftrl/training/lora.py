"""LoRA for ``agent train rl`` (peft): adapters on the policy model, the PPO value head stays full.

Only the adapters (and the value head, a separate full layer of the learner) are trained, so the
optimizer holds state for them alone. Checkpoints hold the adapters (``adapter_model.safetensors``);
the final ``OUT`` holds them in ``OUT/adapter`` and, with ``--merge``, the merged full model in ``OUT``
itself (loadable by ``agent run --policy hf``); without ``--merge`` ``OUT`` is a peft adapter dir.
Dropout is off: the learner's consistency check needs scoring to be deterministic.
"""

from __future__ import annotations

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


def trainable_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
