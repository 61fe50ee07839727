"""The two tools both example agents use.

The examples import this module by name, which works when an example runs as a
script (`python examples/calculator_agent.py` puts `examples/` on the path).
"""

from __future__ import annotations

from langchain_core.tools import tool


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


@tool
def km_to_miles(km: float) -> float:
    """Convert a distance in kilometres to miles."""
    return round(km * 0.621371, 3)


TOOLS = [multiply, km_to_miles]
