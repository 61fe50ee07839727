"""The one deadline-bounded retry policy, shared by the remote engine's failover
and the step pipeline's engine retries."""

from __future__ import annotations

import time
from typing import Any

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_any,
    wait_exponential,
)
from tenacity.stop import stop_base


class stop_at_deadline(stop_base):  # noqa: N801 - reads like tenacity's own stops
    """Stop retrying once ``time.monotonic()`` reaches `deadline` (None: never)."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: Any) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


def retrying_until(
    deadline: float | None,
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    attempts: int,
    wait_multiplier: float,
    wait_max: float,
) -> AsyncRetrying:
    """Retry on `retry_on` at most `attempts` times in all, never past `deadline`
    (an absolute ``time.monotonic()`` value); the last error is re-raised.

    Use as ``async for attempt in retrying_until(...): with attempt: ...``.
    """
    return AsyncRetrying(
        retry=retry_if_exception_type(retry_on),
        stop=stop_any(stop_after_attempt(attempts), stop_at_deadline(deadline)),
        wait=wait_exponential(multiplier=wait_multiplier, max=wait_max),
        reraise=True,
    )
