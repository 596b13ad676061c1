"""Small-scale CPU reproduction of "SFT Memorizes, RL Generalizes" (`agent repro`): only the recipe.

Modules: ``experiments`` (the four settings: envs, held-out sets, model kind, extra metrics), ``hands``
(GP hand pools), ``stage0`` (the GP-L stage-0 curriculum dataset), ``pipeline`` (the stages on the
framework's own commands, statistics, results and figure) and ``command`` (the CLI).
"""
