"""Cost of the tiny VLM (``agent tiny-model --kind char-vision``): image encoding and batched generation.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_tiny_vlm.py [--resolution 64] [--batch 8]
[--new-tokens 16] [--repeats 5] [--image-size 64 --patch-size 8]``. Builds the model in a temp dir,
renders ``--batch`` GP hands at ``--resolution`` px and prints, best of ``--repeats``: the processor's
time per image (resize + normalise); the encoder's (CLIP ViT + projector, one batch); the hf backend's
generation on one batch of compact GP-VL prompts (``HFPolicy._generate_batch``, the call
``agent run --policy hf`` makes, EOS suppressed so every row writes ``--new-tokens``), next to the
``char`` text model on the same prompts with the cards as text.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any


def _best(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _requests(batch: int, new_tokens: int, vision: bool) -> list[Any]:
    from sftrl.agents.hf_policy import _Request
    from sftrl.agents.policy import SamplingParams
    from sftrl.environments.generalpoints.render import render_hand

    loop = asyncio.new_event_loop()
    hands = [["AS", "5C", "JS", "3C"], ["KC", "2S", "9S", "7C"]]
    out = []
    for i in range(batch):
        hand = hands[i % 2]
        if vision:
            content: Any = [{"type": "image"}, {"type": "text", "text": "J=10 Q=10 K=10 | 24"}]
            images = [render_hand(hand, RESOLUTION)]
        else:
            content, images = " ".join(c[0] for c in hand) + " | J=10 Q=10 K=10 | 24", []
        out.append(
            _Request(
                chat=[{"role": "user", "content": content}],
                images=images,
                tools=None,
                sampling=SamplingParams(max_new_tokens=new_tokens, temperature=1.0),
                future=loop.create_future(),
                seed=i,
            )
        )
    return out


RESOLUTION = 64


def main() -> None:
    global RESOLUTION
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=64, help="the model's input size (processor resizes)")
    ap.add_argument("--patch-size", type=int, default=8)
    args = ap.parse_args()
    RESOLUTION = args.resolution

    import torch

    from sftrl.agents.hf_policy import HFPolicy
    from sftrl.agents.tiny import build_char_model
    from sftrl.agents.tiny_vlm import build_char_vision_model

    with tempfile.TemporaryDirectory() as tmp:
        vlm = HFPolicy(
            build_char_vision_model(Path(tmp) / "vlm", image_size=args.image_size, patch_size=args.patch_size)
        )
        char = HFPolicy(build_char_model(Path(tmp) / "char"))
    for policy in (vlm, char):
        # EOS never sampled, so every row writes --new-tokens: tokens/s of full-length replies.
        policy.suppressed_token_ids = sorted({*policy.suppressed_token_ids, *policy.eos_ids})
    params = sum(p.numel() for p in vlm.model.parameters())
    tower = vlm.model.model
    enc_params = sum(
        p.numel() for p in [*tower.vision_tower.parameters(), *tower.multi_modal_projector.parameters()]
    )
    reqs = _requests(args.batch, args.new_tokens, vision=True)
    images = [r.images[0] for r in reqs]
    proc_s = _best(lambda: vlm.processor.image_processor(images, return_tensors="pt"), args.repeats)
    pixels = vlm.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        enc_s = _best(lambda: vlm.model.get_image_features(pixel_values=pixels), args.repeats)
    prompt_len = len(vlm.encode_chat(reqs[0].chat, reqs[0].images)["input_ids"])
    print(
        f"char-vision: {params:,} parameters ({enc_params:,} encoder + projector), {prompt_len} prompt tokens"
    )
    print(
        f"per image at {args.resolution} px: processor {1e3 * proc_s / len(images):.2f} ms, "
        f"encoder {1e3 * enc_s / len(images):.2f} ms (batch {len(images)})"
    )
    for name, policy, vision in (("char-vision", vlm, True), ("char", char, False)):
        batch = _requests(args.batch, args.new_tokens, vision)
        enc_s = _best(lambda p=policy, b=batch: [p.encode_chat(r.chat, r.images) for r in b], args.repeats)
        gen_s = _best(lambda p=policy, b=batch: p._generate_batch(b), args.repeats)
        tokens = args.batch * args.new_tokens
        print(
            f"{name}: generate batch {args.batch} x {args.new_tokens} tokens in {gen_s:.3f} s = "
            f"{tokens / gen_s:.0f} tokens/s (of which encode_chat, template + processor: {enc_s:.3f} s)"
        )


if __name__ == "__main__":
    main()
