# One image for every jewel-dagster process: code server, webserver, daemon, gateway, reference server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DAGSTER_HOME=/opt/dagster/home
WORKDIR /app

COPY pyproject.toml README.md ./
COPY jewel_dagster ./jewel_dagster
COPY gateway ./gateway
RUN pip install --no-cache-dir .
# Development tools, not installed: compose's reference-server service runs devtools.reference_server.
COPY devtools ./devtools

COPY dagster.postgres.yaml deploy/workspace.docker.yaml ./deploy/
RUN mkdir -p "$DAGSTER_HOME" && cp deploy/dagster.postgres.yaml "$DAGSTER_HOME/dagster.yaml"

EXPOSE 3000 4000 8001 9000
