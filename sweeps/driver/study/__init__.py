"""Optuna: the search space, samplers and the persistent study of a sweep. The only folder importing optuna."""
