"""Step records as LangChain custom events (``tidal_step``) for callback handlers.

Outside a runnable there is no parent run to attach an event to; LangChain then
raises, and we skip quietly: a trace event must never fail the step.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event
from langchain_core.runnables import RunnableConfig

from tidal_agents.trace.records import StepRecord

logger = logging.getLogger(__name__)

STEP_EVENT = "tidal_step"


def _payload(record: StepRecord | dict[str, Any]) -> dict[str, Any]:
    return record.model_dump(mode="json") if isinstance(record, StepRecord) else dict(record)


class _SkipWithoutParent:
    """Swallows LangChain's error for an event sent outside a run (logged at debug);
    `sent` then says whether the event went out."""

    def __init__(self) -> None:
        self.sent = True

    def __enter__(self) -> _SkipWithoutParent:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if isinstance(exc, RuntimeError) and "parent run id" in str(exc):
            logger.debug("no parent run: tidal_step event skipped")
            self.sent = False
            return True
        return False


def dispatch_step_event(
    record: StepRecord | dict[str, Any], config: RunnableConfig | None = None
) -> bool:
    """Send `record` to the callbacks of the current run; False if there is none."""
    with _SkipWithoutParent() as outcome:
        dispatch_custom_event(STEP_EVENT, _payload(record), config=config)
    return outcome.sent


async def adispatch_step_event(
    record: StepRecord | dict[str, Any], config: RunnableConfig | None = None
) -> bool:
    """Async `dispatch_step_event` (async callback handlers are awaited)."""
    with _SkipWithoutParent() as outcome:
        await adispatch_custom_event(STEP_EVENT, _payload(record), config=config)
    return outcome.sent
