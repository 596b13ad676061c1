"""Conversation messages: observations become langchain-core messages with image content blocks.

Images travel as standard content blocks ``{"type": "image", "base64": …, "mime_type": "image/png",
"id": <sha256 of the PNG>}``; the id is a content hash so logs can store each image once.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from PIL import Image

from sftrl.environments.base import Observation

# Attribute holding (sha256, PNG) on an image made by png_image: its encoding is known, not redone.
_PNG_ATTR = "_sftrl_png"


def encode_png(image: Image.Image) -> tuple[str, bytes]:
    """PNG-encode ``image`` (fast compression: images are large, the log wants speed) -> (sha256, bytes)."""
    known = getattr(image, _PNG_ATTR, None)
    if known is not None:
        return known
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    data = buf.getvalue()
    return hashlib.sha256(data).hexdigest(), data


def png_image(sha: str, png: bytes) -> Image.Image:
    """The image ``png`` encodes, decoded only when its pixels are read; ``encode_png`` returns
    ``(sha, png)`` for it as is. Env workers send observation images this way: encoded once, in the
    worker, and small on the pipe (a 644 px V-IRL grid: ~30 KB of PNG against 1.2 MB of pixels)."""
    image = Image.open(io.BytesIO(png))
    setattr(image, _PNG_ATTR, (sha, png))
    return image


def image_block(image: Image.Image) -> dict[str, Any]:
    sha, data = encode_png(image)
    return {
        "type": "image",
        "id": sha,
        "mime_type": "image/png",
        "base64": base64.b64encode(data).decode("ascii"),
    }


def observation_to_message(observation: Observation) -> HumanMessage:
    """The user turn for an observation: its images first (as the paper's payload does), then text."""
    if not observation.images:
        return HumanMessage(content=observation.text)
    blocks: list[str | dict[str, Any]] = [image_block(img) for img in observation.images]
    blocks.append({"type": "text", "text": observation.text})
    return HumanMessage(content=blocks)


def image_blocks(message: BaseMessage) -> list[dict[str, Any]]:
    """The image content blocks of a message, in order."""
    if isinstance(message.content, str):
        return []
    return [b for b in message.content if isinstance(b, dict) and b.get("type") == "image"]


def decode_image(block: dict[str, Any]) -> Image.Image:
    """The PIL image of a ``base64`` image block."""
    return Image.open(io.BytesIO(base64.b64decode(block["base64"]))).convert("RGB")


def message_text(message: BaseMessage) -> str:
    """The concatenated text of a message's content."""
    if isinstance(message.content, str):
        return message.content
    parts = []
    for block in message.content:
        if isinstance(block, str):
            parts.append(block)
        elif block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def _with_tool_fields(record: dict[str, Any], message: BaseMessage) -> dict[str, Any]:
    """Tool-calling mode: keep an assistant turn's tool calls and a tool turn's call id."""
    if isinstance(message, AIMessage) and message.tool_calls:
        record["tool_calls"] = [
            {"name": c["name"], "args": c["args"], "id": c.get("id")} for c in message.tool_calls
        ]
    if isinstance(message, ToolMessage):
        record["tool_call_id"] = message.tool_call_id
    return record


def message_to_record(
    message: BaseMessage, store_image: Callable[[str, bytes], str] | None = None
) -> dict[str, Any]:
    """A JSON-ready record of a message; image bytes go to ``store_image(sha, png) -> path``."""
    role = _ROLES.get(message.type, message.type)
    if isinstance(message.content, str):
        return _with_tool_fields({"role": role, "content": message.content}, message)
    content: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, str):
            content.append({"type": "text", "text": block})
        elif block.get("type") == "image":
            record = {"type": "image", "id": block["id"], "mime_type": block.get("mime_type", "image/png")}
            if store_image is not None and "base64" in block:
                record["path"] = store_image(block["id"], base64.b64decode(block["base64"]))
            content.append(record)
        else:
            content.append(dict(block))
    return _with_tool_fields({"role": role, "content": content}, message)


def record_to_message(
    record: dict[str, Any], load_image: Callable[[str], bytes] | None = None
) -> BaseMessage:
    """Inverse of :func:`message_to_record`; ``load_image(path) -> png bytes`` restores image data."""
    content = record["content"]
    if not isinstance(content, str):
        blocks: list[str | dict[str, Any]] = []
        for block in content:
            if block.get("type") == "image" and load_image is not None and "path" in block:
                data = load_image(block["path"])
                blocks.append(
                    {
                        "type": "image",
                        "id": block["id"],
                        "mime_type": block.get("mime_type", "image/png"),
                        "base64": base64.b64encode(data).decode("ascii"),
                    }
                )
            else:
                blocks.append(dict(block))
        content = blocks
    role = record["role"]
    if role == "assistant":
        return AIMessage(content=content, tool_calls=record.get("tool_calls") or [])
    if role == "tool":
        return ToolMessage(content=content, tool_call_id=record.get("tool_call_id", ""))
    if role == "system":
        return SystemMessage(content=content)
    return HumanMessage(content=content)


def truncate_history(messages: Sequence[BaseMessage], keep_last_turns: int | None) -> list[BaseMessage]:
    """Keep the first user turn (the task) and the last ``keep_last_turns`` (reply, feedback) pairs."""
    msgs = list(messages)
    if keep_last_turns is None or len(msgs) <= 1 + 2 * keep_last_turns:
        return msgs
    head = 1 if msgs and not isinstance(msgs[0], SystemMessage) else 2
    tail = msgs[head:]
    return msgs[:head] + (tail[-2 * keep_last_turns :] if keep_last_turns > 0 else tail[-1:])
