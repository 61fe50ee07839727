"""The per-step pipeline: prepare, decide, execute, finish.

`StepPipeline.run` turns one call's messages into a reply and a trace record.
Each phase is a module of pure functions except `execute`, the only one that
talks to the engine.
"""

from tidal_agents.step.decide import AllocationSettings
from tidal_agents.step.execute import HANG_GRACE_S
from tidal_agents.step.finish import PROVIDER
from tidal_agents.step.pipeline import StepOutcome, StepPipeline, StepSettings, episode_for_call
from tidal_agents.step.prepare import TIDAL_KEYS, CallOptions, parse_call_options

__all__ = [
    "HANG_GRACE_S",
    "PROVIDER",
    "TIDAL_KEYS",
    "AllocationSettings",
    "CallOptions",
    "StepOutcome",
    "StepPipeline",
    "StepSettings",
    "episode_for_call",
    "parse_call_options",
]
