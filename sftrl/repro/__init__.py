"""Small-scale CPU reproduction of "SFT Memorizes, RL Generalizes" on GeneralPoints (`agent repro`).

Modules: ``codec`` (fixed-width character encoding), ``data`` (stage-0 curriculum, expert GP episodes,
held-out evaluation sets), ``model`` (tiny decoder with KV-cached sampling), ``rollout`` (sequential
revision against the project's GP verifier), ``train`` (SFT, PPO, GRPO with FLOP accounting) and
``pipeline`` (the whole experiment, results table and figure).
"""
