"""The ModelsLab account's balance, for the owner's log (``shared/docs/backends.md`` §1.5):
``POST {host}/api/wallet_balance`` with ``{key}`` answers
``{"status": "success", "data": {"balance": 43.6, "currency": "USD"}}`` (docs-v2
``general-api/wallet-balance.mdx``).

Logged at start-up; the owner is warned once when it falls below ``SD_LOW_BALANCE`` (again only after it
went back above); after the API said the account is out of credit (402) it is asked again, and the owner
gets one ERROR line. Never raises: the balance is news for the owner, never a reason to fail a job.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CHECK_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class Balance:
    amount: float
    currency: str


def parse_balance(body: object) -> Balance | None:
    if not isinstance(body, dict) or body.get("status") != "success":
        return None
    data = body.get("data")
    if not isinstance(data, dict):
        return None
    amount = data.get("balance")
    if isinstance(amount, bool) or not isinstance(amount, int | float | str):
        return None
    try:  # (an int of 309 digits or more, as JSON allows, is too large for a float)
        amount = float(amount)
    except (ValueError, OverflowError):
        return None
    if not math.isfinite(amount):
        return None
    currency = data.get("currency")
    currency = currency if isinstance(currency, str) and currency.isalpha() and len(currency) <= 8 else "USD"
    return Balance(float(amount), currency.upper())


class Account:
    def __init__(self, ask: Callable[[], Awaitable[Any]], *, low: float) -> None:
        """``ask``: one ``wallet_balance`` call, returning the decoded JSON answer (or raising)."""
        self._ask = ask
        self.low = low
        self.last: Balance | None = None
        self._warned_low = False
        self._said_empty = False
        self._said_key = False

    async def check(self, *, why: str) -> Balance | None:
        try:
            body = await self._ask()
            balance = parse_balance(body)
        except Exception as exc:  # the API's troubles: said in the log, never raised
            if getattr(exc, "status", None) in (401, 403):
                self._key_rejected(why)
            else:
                log.warning(
                    "the account's balance could not be read", extra={"why": why, "error": type(exc).__name__}
                )
            return None
        if balance is None:
            said = body.get("message") or body.get("messege") if isinstance(body, dict) else None
            if "key" in str(said or "").lower():
                self._key_rejected(why)
            else:
                log.warning(
                    "the account's balance could not be read",
                    extra={"why": why, "error": "unexpected answer"},
                )
            return None
        self.last = balance
        amount = f"{balance.amount:.2f} {balance.currency}"
        if why == "start":
            log.info("ModelsLab account balance", extra={"balance": amount})
        if balance.amount <= 0:
            self._out_of_credit(amount)
        elif balance.amount < self.low:
            if not self._warned_low:
                self._warned_low = True
                log.warning(
                    f"the ModelsLab balance is {amount}, below SD_LOW_BALANCE ({self.low:.2f}): top up the "
                    "account at modelslab.com before members' requests start to fail",
                    extra={"balance": amount},
                )
        else:
            self._warned_low = self._said_empty = False
        return balance

    async def out_of_credit(self) -> None:
        """The API answered 402 (or said so): ask again, and tell the owner once."""
        balance = await self.check(why="402")
        self._out_of_credit(f"{balance.amount:.2f} {balance.currency}" if balance else "unknown")

    def _out_of_credit(self, amount: str) -> None:
        if self._said_empty:
            return
        self._said_empty = True
        log.error(
            f"the ModelsLab account is out of credit (balance {amount}): members' requests fail until it is "
            "topped up at modelslab.com",
            extra={"balance": amount},
        )

    def _key_rejected(self, why: str) -> None:
        if not self._said_key:
            self._said_key = True
            log.error(
                "the image API rejected SD_API_KEY: copy the key again from your ModelsLab dashboard into "
                ".env and restart the bot (every member's request fails until then)",
                extra={"why": why},
            )
