"""The agent loop shared by every env and policy: observe, ask the policy, step, revise on feedback."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from pydantic_core import PydanticSerializationError

from sftrl.agents.env_workers import WorkerEnv
from sftrl.agents.events import EpisodeStarted, Listener, TurnFinished, publish
from sftrl.agents.messages import message_to_record, observation_to_message, truncate_history
from sftrl.agents.policy import Policy, Reply, SamplingParams
from sftrl.agents.tools import (
    assistant_message,
    langchain_tools,
    openai_tools,
    reply_action_text,
    tool_result,
)
from sftrl.agents.trajectory import EpisodeRecord, ImageStore, ReplyRecord, TurnRecord, clean_value
from sftrl.environments.base import SftrlEnv, Verdict

# Hard cap on model calls per episode, whatever the env says: protects a run from an env bug.
MAX_CALLS_PER_EPISODE = 1000


def _call_sampling(sampling: SamplingParams, episode_index: int, call_index: int) -> SamplingParams:
    """Per-call sampling params: a run-level seed becomes a distinct, reproducible seed per call.

    Without this every episode of a GRPO group (same initial state, same prompt) would sample the
    same reply under a fixed seed, and the group would carry no learning signal.
    """
    if sampling.seed is None:
        return sampling
    digest = hashlib.sha256(f"{sampling.seed}:{episode_index}:{call_index}".encode()).digest()
    return sampling.model_copy(update={"seed": int.from_bytes(digest[:4], "big") & 0x7FFFFFFF})


def _encodable(reply: Reply, notes: dict[str, int]) -> Reply:
    """The reply with lone surrogates (text no UTF-8 encoder takes) replaced by U+FFFD.

    Its text goes back to the server in the next prompt and into the log; both need valid UTF-8.
    """
    try:
        reply.model_dump_json()  # the fast check: fails only on strings that cannot be encoded
        return reply
    except PydanticSerializationError:
        return Reply.model_validate(clean_value(reply.model_dump(), notes))


async def run_episode(
    env: SftrlEnv | WorkerEnv,
    policy: Policy,
    *,
    seed: int,
    episode_index: int = 0,
    run_id: str = "",
    sampling: SamplingParams | None = None,
    keep_last_turns: int | None = None,
    images: ImageStore | None = None,
    listeners: list[Listener] | None = None,
    reset_options: dict[str, Any] | None = None,
) -> EpisodeRecord:
    """Play one episode and return its record.

    A ``task`` observation starts a fresh conversation; a ``feedback`` observation (the verifier's
    "You failed this trial because …") is appended as a new user turn after the model's reply, and the
    policy tries again, until the env terminates (solved, or out of attempts). A :class:`WorkerEnv`
    (``--env-workers``) plays the same episode in a worker process: its calls are awaited, so other
    episodes run meanwhile.
    """
    sampling = sampling or SamplingParams()
    listeners = listeners or []
    store = images.put if images is not None else None
    started = time.time()
    t0 = time.perf_counter()
    remote = isinstance(env, WorkerEnv)
    if remote:
        observation, _ = await env.reset(seed=seed, options=reset_options)
    else:
        observation, _ = env.reset(seed=seed, options=reset_options)
    env_s = time.perf_counter() - t0
    policy_s = 0.0
    publish(listeners, EpisodeStarted(episode_index, seed, observation))
    record = EpisodeRecord(
        run_id=run_id,
        episode_index=episode_index,
        seed=seed,
        env_id=env.env_id,
        env_config=env.config_dict,
        policy=policy.describe(),
        info=dict(observation.info),
        started_at=started,
    )
    conversation: list[BaseMessage] = []
    step = attempt = 0
    success = False
    # Tool-calling mode: actions are tool calls, and the env's answers (feedback, the next step's
    # observation) come back as their tool results within one continuing conversation.
    tool_mode = env.config_dict.get("protocol") == "tools"
    tools = langchain_tools(env.tool_specs()) if tool_mode else None
    if tools:
        record.tools = openai_tools(tools)  # what the model was shown, so trainers can re-render it
    pending_call: str | None = None
    for call_index in range(MAX_CALLS_PER_EPISODE):
        user = observation_to_message(observation)
        if pending_call is not None:
            conversation.append(tool_result(user, pending_call))
        elif observation.kind == "task":
            conversation = [user]
        else:
            conversation.append(user)
        prompt = truncate_history(conversation, keep_last_turns)
        call_sampling = _call_sampling(sampling, episode_index, call_index)
        t0 = time.perf_counter()
        if tool_mode:
            reply = await policy.generate(prompt, call_sampling, observation=observation, tools=tools)
        else:
            reply = await policy.generate(prompt, call_sampling, observation=observation)
        latency = time.perf_counter() - t0
        policy_s += latency
        reply = _encodable(reply, record.log_notes)
        assistant = assistant_message(reply) if tool_mode else AIMessage(content=reply.text)
        conversation.append(assistant)
        pending_call = assistant.tool_calls[0]["id"] if tool_mode and assistant.tool_calls else None
        action_text = reply_action_text(env, reply) if tool_mode else reply.text
        t0 = time.perf_counter()
        if remote:
            next_obs, reward, terminated, truncated, info = await env.step(action_text)
        else:
            next_obs, reward, terminated, truncated, info = env.step(action_text)
        env_s += time.perf_counter() - t0
        verdict: Verdict = info["verdict"]
        turn = TurnRecord(
            index=call_index,
            step=step,
            attempt=attempt,
            prompt=[message_to_record(m, store) for m in prompt],
            reply=ReplyRecord(
                text=reply.text,
                tool_calls=[dict(c) for c in assistant.tool_calls] if tool_mode else None,
                token_ids=reply.token_ids,
                logprobs=reply.logprobs,
                finish_reason=reply.finish_reason,
                model=reply.model,
                usage=reply.usage,
                sampling=call_sampling.model_dump(),
                latency_s=latency,
            ),
            action=verdict.action,
            verdict=verdict,
            reward=float(reward),
            info=dict(observation.info),
        )
        record.turns.append(turn)
        record.total_reward += float(reward)
        success = bool(info.get("success", False))
        done = terminated or truncated
        publish(listeners, TurnFinished(episode_index, turn, None if done else next_obs))
        if done:
            break
        if next_obs.kind == "task":
            step, attempt = step + 1, 0
        else:
            attempt += 1
        observation = next_obs
    else:
        record.error = f"episode exceeded {MAX_CALLS_PER_EPISODE} model calls without terminating"
    record.success = success
    record.metrics = await env.episode_metrics() if remote else env.episode_metrics()
    record.duration_s = time.time() - started
    record.policy_s = policy_s
    record.env_s = env_s
    return record
