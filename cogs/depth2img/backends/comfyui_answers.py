"""What ComfyUI answers, read for the owner's log and for the job: a refused prompt (HTTP 400
``{"error", "node_errors"}``), a history entry's run-time error, and which saved pictures are the depth
map (``shared/docs/comfyui-real/``: ``prompt_errors.json``, ``history_exec_error.json``), and a
progress frame's numbers. Pure functions."""

from __future__ import annotations

import math
from typing import Any


def refusal_line(body: object) -> str:
    """ComfyUI's 400 answer, as one line for the owner: the error, and each node's problems."""
    if not isinstance(body, dict):
        return "ComfyUI refused the workflow (no details)"
    found = body.get("error")
    error: dict[str, Any] = found if isinstance(found, dict) else {}
    parts = [f"{error.get('type', 'error')}: {error.get('message', '')}".strip()]
    if error.get("details"):
        parts.append(str(error["details"]))
    node_errors = body.get("node_errors")
    if isinstance(node_errors, dict):
        for node_id, info in list(node_errors.items())[:10]:
            if not isinstance(info, dict):
                continue
            errors = info.get("errors")
            for item in errors[:3] if isinstance(errors, list) else []:
                if isinstance(item, dict):
                    parts.append(
                        f"node {node_id} ({info.get('class_type')}): {item.get('message')} {item.get('details', '')}".strip()
                    )
    return "; ".join(p for p in parts if p)[:1500]


def depth_map_nodes(entry: dict[str, Any]) -> set[str]:
    """The SaveImage nodes that save the depth map (their ``filename_prefix`` says ``depthmap``)."""
    prompt = entry.get("prompt")
    graph = prompt[2] if isinstance(prompt, list) and len(prompt) > 2 and isinstance(prompt[2], dict) else {}
    return {
        str(node_id)
        for node_id, node in graph.items()
        if isinstance(node, dict)
        and node.get("class_type") == "SaveImage"
        and isinstance(node.get("inputs"), dict)
        and "depthmap" in str(node["inputs"].get("filename_prefix", ""))
    }


def execution_error(status: dict[str, Any]) -> str:
    messages = status.get("messages")
    for item in messages if isinstance(messages, list) else []:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[1], dict):
            kind, data = item
            if kind == "execution_error":
                return f"{data.get('node_type')} failed: {data.get('exception_type')}: {str(data.get('exception_message'))[:300]}"
            if kind == "execution_interrupted":
                return "interrupted"
    return f"status {status.get('status_str')!r}"


def progress_fraction(value: object, most: object) -> float | None:
    """``value / most`` within 0..1, for a progress frame's numbers; None for what is not such a pair
    (booleans, NaN, numbers no float holds, a ``max`` of zero or less)."""
    if isinstance(value, bool) or isinstance(most, bool):
        return None
    if not isinstance(value, int | float) or not isinstance(most, int | float) or not most > 0:
        return None
    try:
        done = value / most
    except OverflowError:
        return None
    return max(0.0, min(1.0, done)) if math.isfinite(done) else None
