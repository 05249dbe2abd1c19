"""Trajectories: watch optimizers move on 2-D test functions.

- :mod:`.functions`: the test functions (formula, analytic minima, window, start);
- :mod:`.run`: run optimizers from one start and record every iterate (float64),
  tune the learning rate on a log grid, steps to within a tolerance;
- :mod:`.plots`: contour plot, animated GIF, the paper's panel figure;
- :mod:`.outputs`: tables (terminal, CSV, Markdown) and the JSON to redraw from;
- :mod:`.paper`: the AdaBelief paper's toy comparison.

The command line is ``optlab trajectories`` (:mod:`optlab.cli_trajectories`).
"""

from .functions import FUNCTIONS, TestFunction, get_function, list_functions
from .run import Trajectory, run_optimizer, simulate, steps_to_tolerance, tune_lr

__all__ = [
    "FUNCTIONS",
    "TestFunction",
    "Trajectory",
    "get_function",
    "list_functions",
    "run_optimizer",
    "simulate",
    "steps_to_tolerance",
    "tune_lr",
]
