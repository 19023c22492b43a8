#!/usr/bin/env bash
# The team's MLflow tracking server: PostgreSQL backend (runs, params, metrics, model registry) and artifact
# serving (clients upload adapters through the server over HTTP; they never need the artifact store's credentials).
#
#   MLFLOW_BACKEND_STORE_URI=postgresql+psycopg2://sweeps:PASSWORD@127.0.0.1:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=/srv/mlflow/artifacts \
#   bash platform/start-mlflow-server.sh
#
# Optional: MLFLOW_HOST (default 127.0.0.1: put a TLS reverse proxy in front rather than binding 0.0.0.0),
# MLFLOW_PORT (5000), MLFLOW_WORKERS (2), MLFLOW_ALLOWED_HOSTS (Host headers accepted, e.g.
# "mlflow.example.com,10.0.0.5:5000"), MLFLOW_CORS_ALLOWED_ORIGINS, MLFLOW_AUTH_CONFIG_PATH (a copy of
# platform/mlflow-auth.ini: turns on basic auth), MLFLOW_BIN (the mlflow executable, default `mlflow`).
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. postgresql+psycopg2://sweeps:PASSWORD@127.0.0.1:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. /srv/mlflow/artifacts or s3://bucket/mlflow}"

args=(server
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"
  --serve-artifacts --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION"
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}")
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS"); fi
if [[ -n "${MLFLOW_CORS_ALLOWED_ORIGINS:-}" ]]; then args+=(--cors-allowed-origins "$MLFLOW_CORS_ALLOWED_ORIGINS"); fi
if [[ -n "${MLFLOW_AUTH_CONFIG_PATH:-}" ]]; then
  export MLFLOW_AUTH_CONFIG_PATH
  args+=(--app-name basic-auth)
fi

# exec: the server is this process, so a supervisor (systemd, a test) that stops it stops the server.
exec "${MLFLOW_BIN:-mlflow}" "${args[@]}"
