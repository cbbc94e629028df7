"""The records the ledger keeps: a job and its states, and how a job becomes a database row and back.

States::

    acknowledged ──► received ──► submitting ──► submitted ──► processing ──► delivered
         │              │             │             │              │
         └──────────────┴─────────────┴─────────────┴──────────────┴──► failed / cancelled

``acknowledged`` is written as soon as the member has been answered "thinking…", before the picture is
read: a restart then still knows the request, and ends it (running it, or telling the member).
``received``: the picture is checked and kept.
``submitting`` is written *before* the (paid) submission goes out. A job found in ``submitting``
after a crash may or may not exist at the image service, and is never sent again: it fails with a
message that says so. A job in ``submitted``/``processing`` has the service's request id and is
resumed by polling.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from cogs.depth2img.cleaning import clean_text
from cogs.depth2img.errors import Depth2ImgError
from cogs.depth2img.models import GenerationParams, JobKind


class JobState(StrEnum):
    ACKNOWLEDGED = "acknowledged"
    RECEIVED = "received"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    PROCESSING = "processing"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED})


class DuplicateInteraction(Depth2ImgError):
    """This interaction already has its job: Discord delivered it twice (a replayed event)."""

    def __init__(self, interaction_id: str) -> None:
        super().__init__(f"interaction {interaction_id} already has a job")
        self.interaction_id = interaction_id


class JobTakenOver(Depth2ImgError):
    """Another bot process owns this job now (this one stalled past its lease, or was replaced):
    this process must leave it alone; the owner finishes it."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} is owned by another process")
        self.job_id = job_id


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    state: JobState
    user_id: int
    channel_id: int
    guild_id: int | None
    application_id: int
    interaction_token: str = field(repr=False)
    interaction_created_at: float  # unix time; the token is valid for 15 minutes from here
    message_id: int | None
    upload_limit_bytes: int
    params: GenerationParams
    source_path: str | None = None
    source_url: str | None = None
    source_changed: bool = False
    api_job_id: str | None = None
    fetch_url: str | None = None
    output_urls: tuple[str, ...] = ()
    generation_time_s: float | None = None
    api_seed: int | None = None
    error_kind: str | None = None
    error_text: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    submitted_at: float | None = None
    finished_at: float | None = None
    resumes: int = 0
    parent_id: str | None = None  # the job this one was made from (buttons, edits)
    kind: JobKind = JobKind.COMMAND
    result_path: str | None = None  # the first delivered image, kept for "Use as source" and /show
    owner: str = ""  # the bot process that drives this job (``<group>/<random>``)
    lease_until: float = 0.0  # unix time; after it, another process may take the job over
    delivering: bool = False  # the owner has begun delivering it
    interaction_id: str | None = None  # the interaction that asked for it: one job per interaction
    age_restricted: bool = False  # asked for in an age-restricted channel
    deleted_at: float | None = None  # its result was deleted (by the member who asked, or a moderator)
    result_info: str | None = None  # JSON: the delivered result's timings, size and seed (Details)
    # unix time: its message could not be edited, so its result began to be posted in the channel
    channel_post_at: float | None = None
    # unix time: its kept result (undelivered) was last tried in its channel after the job ended
    late_post_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def undelivered(self) -> bool:
        """Its result was made, but Discord refused it: it is kept, as a delivered one is."""
        return (
            self.state is JobState.FAILED and self.error_kind == "DeliveryFailed" and bool(self.result_path)
        )

    @property
    def has_picture(self) -> bool:
        """Whether its result's first picture is kept: delivered, or refused by Discord."""
        return bool(self.result_path) and (self.state is JobState.DELIVERED or self.undelivered)


COLUMNS = tuple(f.name for f in fields(Job))

_REAL_COLUMNS = (
    "interaction_created_at",
    "generation_time_s",
    "created_at",
    "updated_at",
    "submitted_at",
    "finished_at",
    "lease_until",
    "deleted_at",
    "channel_post_at",
    "late_post_at",
)


def _params(job: Job) -> str:
    p = job.params
    return json.dumps(
        {
            "prompt": clean_text(p.prompt),
            "negative_prompt": clean_text(p.negative_prompt) if p.negative_prompt else p.negative_prompt,
            "strength": p.strength,
            "steps": p.steps,
            "guidance": p.guidance,
            "seed": p.seed,
            "samples": p.samples,
            "safety_checker": p.safety_checker,
            "width": p.width,
            "height": p.height,
        }
    )


def _real(name: str) -> Callable[[Job], float | None]:
    def encode(job: Job) -> float | None:
        value = getattr(job, name)
        return None if value is None else float(value)

    return encode


# Columns whose stored form is not the field's own value (the rest: the value, strings cleaned).
_ENCODED: dict[str, Callable[[Job], Any]] = {
    "state": lambda job: str(job.state),
    "kind": lambda job: str(job.kind),
    "params": _params,
    "output_urls": lambda job: json.dumps([clean_text(u) for u in job.output_urls]),
    "source_changed": lambda job: int(job.source_changed),
    "delivering": lambda job: int(job.delivering),
    "age_restricted": lambda job: int(job.age_restricted),
    **{name: _real(name) for name in _REAL_COLUMNS},
}


def to_row(job: Job, names: Iterable[str] = COLUMNS) -> dict[str, Any]:
    """The job as a row, or only the columns ``names`` (an update writes only what changed). Every
    string is cleaned on the way (:func:`clean_text`): one bad value from a member or the image
    service must not make a statement fail, or a job stall."""
    row: dict[str, Any] = {}
    for name in names:
        encode = _ENCODED.get(name)
        if encode is not None:
            row[name] = encode(job)
        else:
            value = getattr(job, name)
            row[name] = clean_text(value) if isinstance(value, str) else value
    return row


def from_row(row: Mapping[str, Any]) -> Job:
    data = dict(row)
    data["state"] = JobState(data["state"])
    data["kind"] = JobKind(data["kind"])
    data["params"] = GenerationParams(**json.loads(data["params"]))
    data["output_urls"] = tuple(json.loads(data["output_urls"]))
    data["source_changed"] = bool(data["source_changed"])
    data["delivering"] = bool(data["delivering"])
    data["age_restricted"] = bool(data["age_restricted"])
    return Job(**data)
