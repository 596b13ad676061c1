"""FSDP2 for the own RL learner (``agent train rl --fsdp``): torch's ``fully_shard`` on the learner's
model, and the gathers that give full weights and full optimizer state back.

Each process holds a shard of every parameter, gradient and optimizer state; a forward or backward
all-gathers one wrapped block (each transformer layer, then the rest) at a time and reduce-scatters its
gradients. That works with gloo on CPU as with NCCL on GPUs, which is why the learner applies it itself:
accelerate (1.15) turns FSDP on only for GPUs/accelerators. Sampling cannot run on a sharded model (every
process would have to run the same forward calls in lockstep), so rollouts, evaluation, weight pushes and
checkpoints use full weights gathered after each update (:func:`full_model_state`).

All gathers here are collectives: every process of the launch calls them, in the same order.
"""

from __future__ import annotations

from typing import Any


def layer_classes(model: Any) -> set[str]:
    """Class names of the blocks each wrapped on its own: what transformers declares must not be split
    across devices (``_no_split_modules``: decoder layers, vision blocks)."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return names


def shard(module: Any, device_type: str, compute_dtype: Any = None) -> Any:
    """Apply ``fully_shard`` to every block of :func:`layer_classes` inside ``module``, then to
    ``module`` itself (what is left: embeddings, head, the PPO value head) over all processes of the
    default process group. Build the optimizer afterwards: sharding replaces the parameters.

    ``compute_dtype`` (e.g. ``torch.bfloat16``): FSDP2's mixed precision. The shards, the optimizer
    and everything gathered for sampling or saving stay in the parameters' dtype (fp32 masters);
    each all-gather casts a block's parameters to ``compute_dtype`` for its forward and backward (half
    the traffic and the memory of the gathered block), and gradients are reduce-scattered in fp32."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("--fsdp shards over the processes of `accelerate launch`; none was started")
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    blocks = layer_classes(module)
    for sub in list(module.modules()):
        if sub is not module and type(sub).__name__ in blocks:
            fully_shard(sub, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    return module


def full_model_state(module: Any, everyone: bool = True) -> dict[str, Any]:
    """The full (unsharded) state dict of ``module`` on CPU: on every process, or (``everyone``
    False) on the first only, the others getting ``{}`` and never holding the whole."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=not everyone)
    state = {k: v.detach().cpu() for k, v in get_model_state_dict(module, options=options).items()}
    # Each name of a tied parameter (lm_head = embed_tokens) gets its own gathered tensor; alias them
    # again, so the tie survives (transformers' save_pretrained finds ties by shared storage).
    first: dict[int, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        owner = first.setdefault(id(param), name)
        if owner != name and name in state and owner in state:
            state[name] = state[owner]
    return state


def full_optimizer_state(module: Any, optimizer: Any) -> dict[str, Any]:
    """The full optimizer state (parameters by name) on the first process, on CPU; ``{}`` on the
    others, which never hold the whole (AdamW's moments are twice the fp32 weights: N processes on
    one node holding a copy each would need N times that in host memory at every checkpoint).
    Loadable by :func:`load_full_optimizer_state` with any number of processes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_optimizer_state_dict(module, optimizer, options=options)
    return _to_cpu(state)


def load_full_optimizer_state(module: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Each process takes its shard of a full optimizer state that the first process passes (the
    others pass ``{}``): tensors are broadcast one at a time, so no other process holds the whole."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_optimizer_state_dict(module, optimizer, optim_state_dict=state, options=options)


def load_full_model_state(module: Any, state: dict[str, Any]) -> None:
    """Each process takes its shard of the full tensors in ``state`` (a subset of the keys is fine)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=False))


def _to_cpu(obj: Any) -> Any:
    if hasattr(obj, "detach"):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
