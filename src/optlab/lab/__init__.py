"""The lab: tasks, runs, studies, results, plots and reports (depends on optlab.optim)."""
