-- One PostgreSQL, one database per engine: the MLflow registry and the Prefect API.
-- Runs once, when the data volume is empty (the postgres image's docker-entrypoint-initdb.d).
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
