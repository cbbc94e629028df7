"""Plain data shared by every layer of /depth2img: what a member asked for, what came back, how a job
is going, and the typed names (job kinds, button actions, progress stages). Nothing here imports
discord.py or aiohttp, or does any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobKind(StrEnum):
    """How a job came to be: the command, the context menu, or a button on an earlier result."""

    COMMAND = "command"
    MENU = "menu"
    SEED = "seed"
    EDIT = "edit"
    CLOSER = "closer"
    MORE = "more"
    REUSE = "reuse"


class Action(StrEnum):
    """The buttons on a result (and on a job in progress). Their values are part of the buttons'
    custom ids (``d2i:<action>:<job id>``), so buttons of old messages keep working: never rename one."""

    SEED = "seed"
    EDIT = "edit"
    CLOSER = "closer"
    MORE = "more"
    REUSE = "reuse"
    COMPARE = "compare"
    DELETE = "delete"
    CANCEL = "cancel"
    DEPTH = "depth"  # the depth map the service used (services that send it)
    DETAILS = "details"  # the result's details, privately (the compact card)

    @property
    def kind(self) -> JobKind:
        """The kind of job this button makes (only for the five that make one)."""
        return JobKind(self.value)


# The buttons that make a new job from an earlier one.
DERIVING = (Action.SEED, Action.EDIT, Action.CLOSER, Action.MORE, Action.REUSE)


class Stage(StrEnum):
    """Where a job is, for the member's progress line."""

    WAITING_FOR_SLOT = "waiting_for_slot"  # in the bot's own queue
    QUEUED_AT_API = "queued_at_api"  # accepted by the image service, not finished yet
    SERVICE_SLOW = "service_slow"  # at the image service, which is not answering well: still trying
    GENERATING = "generating"  # the image service is making it and says how far it is (``done``)


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A step worth showing to the member while they wait. Flows one way: from the job to the UI."""

    stage: Stage
    position: int | None = None  # place in the bot's queue (1: next)
    eta_s: float | None = None  # expected seconds from now until the picture is ready
    done: float | None = None  # how far the generation is, 0 to 1 (services that say so)


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """What the member asked for. ``None`` means 'let the image service decide'."""

    prompt: str
    negative_prompt: str | None = None
    strength: float | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    samples: int = 1
    safety_checker: bool = True  # the service replaces unsafe images with a blank one
    width: int | None = None  # the source picture's size, once it is kept (routes that need a size)
    height: int | None = None


@dataclass(frozen=True, slots=True)
class GeneratedImage:
    data: bytes
    filename: str
    width: int
    height: int
    blank: bool = False  # one flat colour: what a safety checker sends instead of an unsafe picture


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """The delivered outcome of one job, with the timings the member sees."""

    images: tuple[GeneratedImage, ...]
    job_id: str | None
    seed: int | None
    generation_time_s: float | None  # the service's own figure (generationTime), when it gave one
    api_queue_s: float | None  # time the job spent queued at the service, when we can tell
    local_wait_s: float  # time spent waiting for one of our own generation slots
    total_s: float  # from the command to the images being ready to send
    depth_map: GeneratedImage | None = None  # the depth map the service used, when it sent it


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str


@dataclass(frozen=True, slots=True)
class SourceImage:
    """The member's picture as the API will get it: upright, 8-bit RGB, no metadata, within the
    API's size limit. ``changed`` says whether it differs from the attachment as uploaded (then
    the API must be sent these bytes rather than the attachment's URL)."""

    data: bytes
    mime: str
    width: int
    height: int
    changed: bool
    original: ImageInfo
