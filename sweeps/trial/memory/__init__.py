"""Memory of a trial: its measured peak, the base model a worker keeps between trials, the frozen-prefix cache."""
