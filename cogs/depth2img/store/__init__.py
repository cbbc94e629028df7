"""The job ledger: records (:mod:`.records`), the ledger's queries (:mod:`.ledger`), its schema and
migrations (:mod:`.schema`), and the two databases it runs on (:mod:`.sqlite`, :mod:`.postgres`).
Discord-free and HTTP-free."""

from .base import LedgerClosed, SchemaTooNew, StoreError
from .ledger import Ledger
from .records import FINISHED, DuplicateInteraction, Job, JobState, JobTakenOver

__all__ = [
    "FINISHED",
    "DuplicateInteraction",
    "Job",
    "JobState",
    "JobTakenOver",
    "Ledger",
    "LedgerClosed",
    "SchemaTooNew",
    "StoreError",
]
