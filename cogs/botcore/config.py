"""The operations extension's settings: ``METRICS_PORT`` and ``METRICS_HOST``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

SETTINGS_HELP: dict[str, str] = {
    "METRICS_PORT": "optional: serve Prometheus metrics at http://METRICS_HOST:METRICS_PORT/metrics",
    "METRICS_HOST": "the address the metrics port listens on (default 127.0.0.1)",
    "HEALTH_PORT": "optional: serve GET /healthz (200 when the gateway is connected and the ledger answers, else 503) on this port of METRICS_HOST; /healthz is also on METRICS_PORT",
}


@dataclass(frozen=True, slots=True)
class OpsSettings:
    metrics_port: int | None = None  # None: no metrics port
    metrics_host: str = "127.0.0.1"
    health_port: int | None = None  # None: /healthz only on the metrics port, if any


def read(env: Mapping[str, str]) -> tuple[OpsSettings, list[str]]:
    problems: list[str] = []
    ports: dict[str, int | None] = {}
    for name in ("METRICS_PORT", "HEALTH_PORT"):
        ports[name] = None
        raw = (env.get(name) or "").strip()
        if raw:
            if raw.isdigit() and 0 <= int(raw) <= 65535:
                ports[name] = int(raw)
            else:
                problems.append(f"{name}={raw!r} is not a port number from 0 to 65535.")
    host = (env.get("METRICS_HOST") or "").strip() or "127.0.0.1"
    return OpsSettings(
        metrics_port=ports["METRICS_PORT"], metrics_host=host, health_port=ports["HEALTH_PORT"]
    ), problems
