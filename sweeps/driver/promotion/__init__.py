"""After a sweep: its Pareto front (table, plot) and the promotion of chosen adapters into the model registry."""
