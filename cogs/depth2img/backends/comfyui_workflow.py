"""ComfyUI workflows in the API format, with the bot's named placeholders.

A placeholder is an input whose whole value is ``"{{name}}"``; :func:`fill` puts the job's value there,
typed (numbers as numbers). The bot ships a depth workflow (``workflows/comfyui_depth.json``: load image
-> depth preprocessor -> ControlNet apply -> sampler from the encoded source with denoise = strength ->
decode -> save); ``COMFYUI_WORKFLOW`` may name the owner's own, checked at start-up by :func:`load`.
The preprocessor node, ``DepthAnythingV2Preprocessor``, comes from the comfyui_controlnet_aux pack
(``shared/docs/backends.md`` §3.2); the rest is ComfyUI's core.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_WORKFLOW = Path(__file__).parent / "workflows" / "comfyui_depth.json"
REQUIRED = ("image", "prompt", "seed", "steps", "guidance", "strength")
OPTIONAL = ("negative_prompt", "checkpoint", "controlnet", "samples")
_PLACEHOLDER = re.compile(r"^\{\{(\w+)\}\}$")


class WorkflowError(Exception):
    """The workflow file cannot be used; the message says why, for the owner (``bot.py`` logs
    ``owner_message`` as the one line it prints, and exits 2: a setting to fix)."""

    @property
    def owner_message(self) -> str:
        return str(self)


@dataclass(frozen=True, slots=True)
class Workflow:
    graph: dict[str, Any]
    where: dict[str, list[tuple[str, str]]]  # placeholder -> (node id, input name) where it appears
    source: str

    @property
    def node_types(self) -> set[str]:
        return {str(node["class_type"]) for node in self.graph.values()}

    def seed_at(self) -> tuple[str, str] | None:
        found = self.where.get("seed")
        return found[0] if found else None


def load(path: Path | None) -> Workflow:
    """Read and check a workflow: API format (node id -> ``class_type`` and ``inputs``), at least one
    ``SaveImage``, every required placeholder present, no unknown one. Raises :class:`WorkflowError`."""
    where_from = str(path or DEFAULT_WORKFLOW)
    try:
        graph = json.loads((path or DEFAULT_WORKFLOW).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise WorkflowError(
            f"COMFYUI_WORKFLOW {where_from} cannot be read as JSON ({type(exc).__name__})"
        ) from None
    if (
        not isinstance(graph, dict)
        or not graph
        or not all(
            isinstance(n, dict) and isinstance(n.get("class_type"), str) and isinstance(n.get("inputs"), dict)
            for n in graph.values()
        )
    ):
        raise WorkflowError(
            f"COMFYUI_WORKFLOW {where_from} is not in ComfyUI's API format: export it with "
            "'Save (API Format)' (node ids mapping to class_type and inputs)"
        )
    where: dict[str, list[tuple[str, str]]] = {}
    for node_id, node in graph.items():
        for name, value in node["inputs"].items():
            if isinstance(value, str) and (m := _PLACEHOLDER.match(value)):
                where.setdefault(m.group(1), []).append((str(node_id), name))
    unknown = sorted(set(where) - set(REQUIRED) - set(OPTIONAL))
    missing = [p for p in REQUIRED if p not in where]
    if unknown or missing:
        parts = []
        if missing:
            parts.append("it lacks " + ", ".join("{{" + p + "}}" for p in missing))
        if unknown:
            parts.append("it has unknown " + ", ".join("{{" + p + "}}" for p in unknown))
        raise WorkflowError(
            f"COMFYUI_WORKFLOW {where_from}: {'; '.join(parts)} (the placeholders are "
            + ", ".join("{{" + p + "}}" for p in (*REQUIRED, *OPTIONAL))
            + ")"
        )
    if not any(n["class_type"] == "SaveImage" for n in graph.values()):
        raise WorkflowError(f"COMFYUI_WORKFLOW {where_from} has no SaveImage node: nothing would come back")
    return Workflow(graph, where, where_from)


def fill(workflow: Workflow, values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the graph with every placeholder replaced by its value."""
    graph: dict[str, Any] = json.loads(json.dumps(workflow.graph))
    for name, places in workflow.where.items():
        for node_id, input_name in places:
            graph[node_id]["inputs"][input_name] = values[name]
    return graph
