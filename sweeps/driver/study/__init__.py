"""Optuna: the search space, samplers and the persistent study of a sweep. The only folder importing optuna.

space.py (spec -> distributions, grid, sampler), storage.py (the study database, retried on locks), study.py (the
sweep's study under ask/tell, drivers' heartbeats; the free-form studies of `sweep fuse`).
"""

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)  # per-trial INFO lines would flood the sweep's output
