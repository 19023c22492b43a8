"""The trial side: one configuration trained and measured in one process, free of ray, mlflow and optuna."""
