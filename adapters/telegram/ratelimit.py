"""Telegram's flood limits and network errors: python-telegram-bot's rate limiter (which waits
out a 429's ``retry_after``), a way to opt a request out of it, and a back-off for sends."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable
from datetime import timedelta

from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut
from telegram.ext import AIORateLimiter
from telegram.warnings import PTBDeprecationWarning

log = logging.getLogger("assistant.telegram")


def retry_seconds(error: RetryAfter) -> float:
    """How long the flood limit lasts (``retry_after`` is moving from seconds to a timedelta;
    python-telegram-bot warns on every read until one opts in)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = error.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


#: ``rate_limit_args`` of a streamed update: answered with 429, it is skipped, not retried.
NO_RETRY = "no retry"


class RateLimiter(AIORateLimiter):
    """python-telegram-bot's rate limiter (throttles, retries after a 429's ``retry_after``),
    except that a request made with ``rate_limit_args=NO_RETRY`` gets the 429 at once
    (AIORateLimiter reads 0 retries as "the default")."""

    async def process_request(self, callback: Callable[..., Awaitable[object]], args: object,
                              kwargs: dict, endpoint: str, data: dict, rate_limit_args: object) -> object:
        if rate_limit_args != NO_RETRY:
            return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)

        async def once(*a: object, **kw: object) -> object:
            try:
                return await callback(*a, **kw)
            except RetryAfter as exc:  # not a RetryAfter to the limiter, so not retried
                raise _Flood(exc) from exc

        try:
            return await super().process_request(once, args, kwargs, endpoint, data, None)
        except _Flood as flood:
            raise flood.error from None


class _Flood(Exception):
    def __init__(self, error: RetryAfter) -> None:
        super().__init__(str(error))
        self.error = error


async def retry(send: Callable[..., Awaitable[object]], *args: object, attempts: int = 3,
                 **kwargs: object) -> object:
    """``send(*args, **kwargs)``, retried with back-off on network errors (flood limits are
    python-telegram-bot's rate limiter's)."""
    for attempt in range(attempts):
        try:
            return await send(*args, **kwargs)
        except (BadRequest, Forbidden, TimedOut):
            raise  # a refusal, or a timeout after which the message may have been delivered
        except NetworkError as exc:
            if attempt == attempts - 1:
                raise
            log.warning("Network error sending a message (%s); retrying", exc)
            await asyncio.sleep(2 ** attempt)
    raise AssertionError("unreachable")
