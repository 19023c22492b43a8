-- One role and two databases for a team's sweeps. Run once, as the PostgreSQL superuser, on the database host:
--   sudo -u postgres psql -v ON_ERROR_STOP=1 -v password="$SWEEPS_DB_PASSWORD" -f platform/postgres-init.sql
-- Two databases, not two schemas of one: MLflow and Optuna both keep a table named `alembic_version`.
-- (tests/test_scaleout.py runs this very file against a private PostgreSQL cluster.)

CREATE ROLE sweeps LOGIN PASSWORD :'password';

CREATE DATABASE mlflow OWNER sweeps;   -- MLflow tracking + model registry (the tracking server connects)
CREATE DATABASE optuna OWNER sweeps;   -- Optuna studies (every `sweep run` driver connects)

-- Nobody else may even connect.
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE optuna FROM PUBLIC;
