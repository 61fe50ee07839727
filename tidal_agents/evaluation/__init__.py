"""Evaluation harness: tasks, outcome collection, predictor training, external suites."""

from tidal_agents.evaluation.datasets import DatasetUnavailableError, load_task
from tidal_agents.evaluation.tasks import TaskItem, graded_arithmetic

__all__ = ["DatasetUnavailableError", "TaskItem", "graded_arithmetic", "load_task"]
