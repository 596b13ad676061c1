"""Tool-calling mode on the agent side: env tool specs as langchain-core tools, calls back to reply text.

The env's :class:`~sftrl.environments.tools.ToolSpec` s become ``StructuredTool`` s (pydantic argument
schemas), which backends bind natively (OpenAI/vLLM ``tools``) or render through the chat template
(``hf``). The tools are never executed by a model: the agent loop turns the model's first tool call
into the reply text the env's verifier scores, and the env's answer becomes the ``ToolMessage``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from sftrl.agents.policy import Reply
from sftrl.environments.base import SftrlEnv
from sftrl.environments.tools import ToolSpec, call_to_reply

if TYPE_CHECKING:
    from sftrl.agents.env_workers import WorkerEnv

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_hermes_tool_calls(text: str) -> tuple[str, list[dict[str, Any]] | None]:
    """``(text outside the calls, langchain-style calls)`` from Hermes / Qwen2.5 ``<tool_call>`` blocks.

    The one parser of model text for every in-process backend (``hf``, ``vllm-offline``), so the same
    output gives the same episode on each. A block should hold ``{"name": ..., "arguments": {...}}``
    (``parameters`` is accepted too; double-encoded arguments are decoded once). A block that is not
    such JSON still becomes a call (name ``""`` or the name found, arguments = the raw text) so the
    verifier scores it as malformed instead of the run crashing on model output. Call ids hash the
    reply and the call's position: reproducible, as logs must be for a fixed seed.
    """
    blocks = list(_TOOL_CALL.finditer(text))
    if not blocks:
        return text, None
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    calls: list[dict[str, Any]] = []
    for i, match in enumerate(blocks):
        raw = match.group(1).strip()
        name, args = "", raw
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            name = str(obj.get("name", ""))
            arguments = obj.get("arguments", obj.get("parameters", {}))
            if isinstance(arguments, str):  # some models double-encode the arguments
                with contextlib.suppress(json.JSONDecodeError, RecursionError):
                    arguments = json.loads(arguments) if arguments.strip() else {}
            args = arguments if isinstance(arguments, dict | str) else json.dumps(arguments)
        calls.append({"name": name, "args": args, "id": f"call_{digest}_{i}"})
    return _TOOL_CALL.sub("", text).strip(), calls


def _not_executable(**_: Any) -> str:
    raise RuntimeError("env tools are acted on by the env, not executed")


def langchain_tools(specs: list[ToolSpec]) -> list[BaseTool]:
    """The env's action tools as langchain-core ``StructuredTool`` s."""
    return [
        StructuredTool.from_function(
            func=_not_executable, name=s.name, description=s.description, args_schema=s.args_schema
        )
        for s in specs
    ]


def openai_tools(tools: list[BaseTool]) -> list[dict[str, Any]]:
    """The OpenAI ``tools`` request field for ``tools`` (JSON schemas of their arguments)."""
    return [convert_to_openai_tool(t) for t in tools]


def decode_arguments(args: Any) -> dict[str, Any]:
    """A tool call's arguments as a dict: a JSON object string is decoded (once); anything else a model
    sends (broken JSON, a number, a list) is kept as ``{"_raw": value}`` for the verifier to reject."""
    if args is None or args == "":
        return {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (json.JSONDecodeError, RecursionError):
            return {"_raw": args}
    return args if isinstance(args, dict) else {"_raw": args}


def reply_action_text(env: SftrlEnv | WorkerEnv, reply: Reply) -> str:
    """What the verifier scores: the first tool call as reply text, or the reply's text if it made none."""
    if reply.tool_calls:
        call = reply.tool_calls[0]
        args = decode_arguments(call.get("args"))
        if "_raw" in args and len(args) == 1:
            raw = args["_raw"]
            return f"(tool call {call.get('name')!r} with unparseable arguments: {str(raw)[:200]!r})"
        return call_to_reply(env.tool_specs(), str(call.get("name", "")), args)
    return reply.text


def assistant_message(reply: Reply) -> AIMessage:
    """The reply as the conversation's assistant turn (tool calls included)."""
    if not reply.tool_calls:
        return AIMessage(content=reply.text)
    calls = []
    for i, c in enumerate(reply.tool_calls):
        args = decode_arguments(c.get("args"))
        calls.append({"name": str(c.get("name", "")), "args": args, "id": str(c.get("id") or f"call_{i}")})
    return AIMessage(content=reply.text, tool_calls=calls)


def tool_result(user: BaseMessage, call_id: str) -> ToolMessage:
    """The env's next observation (feedback or the next step, images included) as the tool's result."""
    return ToolMessage(content=user.content, tool_call_id=call_id)
