"""MLflow: experiments, runs, artifacts, the model registry and the pyfunc model. The only folder importing mlflow."""
