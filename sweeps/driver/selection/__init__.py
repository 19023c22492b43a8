"""Choosing among trials (numpy only): tolerances, Pareto fronts, hypervolume, early stopping, selection policies."""
