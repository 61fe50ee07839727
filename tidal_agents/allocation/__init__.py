"""Per-step allocation: features, grid, cost and accuracy predictors, the controller.

Heavy parts (scikit-learn, the engine for calibration) load lazily.
"""

from tidal_agents.allocation.controller import (
    CandidateEstimate,
    StepDecision,
    check_lambda,
    decide,
)
from tidal_agents.allocation.cost_model import (
    CostModel,
    CostParams,
    CostPrediction,
    default_path,
)
from tidal_agents.allocation.features import FEATURE_NAMES, StepFeatures
from tidal_agents.allocation.grid import check_grid, default_grid
from tidal_agents.allocation.predictor import (
    AccuracyPredictor,
    PriorAccuracyPredictor,
    SklearnAccuracyPredictor,
    TrainingRow,
    bootstrap_soft_label,
)

__all__ = [
    "FEATURE_NAMES",
    "AccuracyPredictor",
    "CandidateEstimate",
    "CostModel",
    "CostParams",
    "CostPrediction",
    "PriorAccuracyPredictor",
    "SklearnAccuracyPredictor",
    "StepDecision",
    "StepFeatures",
    "TrainingRow",
    "bootstrap_soft_label",
    "check_grid",
    "check_lambda",
    "decide",
    "default_grid",
    "default_path",
]
