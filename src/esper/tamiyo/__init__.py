"""Controllers: the signal tracker and the heuristic policy."""

from esper.tamiyo.baseline import NoGrowthController
from esper.tamiyo.blueprints import BlueprintChooser, BlueprintRotation
from esper.tamiyo.heuristic import HeuristicConfig, HeuristicController
from esper.tamiyo.schedule import PlannedGrowth, ScheduleController, check_plan
from esper.tamiyo.tracker import SignalTracker, TrackerConfig

__all__ = [
    "BlueprintChooser",
    "BlueprintRotation",
    "HeuristicConfig",
    "HeuristicController",
    "NoGrowthController",
    "PlannedGrowth",
    "ScheduleController",
    "SignalTracker",
    "TrackerConfig",
    "check_plan",
]
