"""The operations extension's settings: ``METRICS_PORT`` and ``METRICS_HOST``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SETTINGS_HELP: dict[str, str] = {
    "METRICS_PORT": "optional: serve Prometheus metrics at http://METRICS_HOST:METRICS_PORT/metrics",
    "METRICS_HOST": "the address the metrics port listens on (default 127.0.0.1)",
}


@dataclass(frozen=True, slots=True)
class OpsSettings:
    metrics_port: int | None = None  # None: no metrics port
    metrics_host: str = "127.0.0.1"


def read(env: Mapping[str, str]) -> tuple[OpsSettings, list[str]]:
    problems: list[str] = []
    port: int | None = None
    raw = (env.get("METRICS_PORT") or "").strip()
    if raw:
        if raw.isdigit() and 0 <= int(raw) <= 65535:
            port = int(raw)
        else:
            problems.append(f"METRICS_PORT={raw!r} is not a port number from 0 to 65535.")
    host = (env.get("METRICS_HOST") or "").strip() or "127.0.0.1"
    return OpsSettings(metrics_port=port, metrics_host=host), problems
