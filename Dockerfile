# One image for every jewel-dagster process: code server, webserver, daemon, gateway, Celery
# worker, reference server (docs/deployment.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DAGSTER_HOME=/opt/dagster/home
WORKDIR /app

COPY pyproject.toml README.md ./
COPY deploy/constraints.txt ./deploy/
COPY jewel_dagster ./jewel_dagster
COPY gateway ./gateway
RUN pip install --no-cache-dir -c deploy/constraints.txt .
# Development tools, not installed: compose's reference-server service runs devtools.reference_server,
# and every container writes its dagster.yaml with devtools.instance_config (below).
COPY devtools ./devtools
# The instance configuration, one base and its overlays, merged at each container's start.
COPY dagster.yaml dagster.postgres.yaml dagster.celery.yaml ./
COPY deploy/workspace.docker.yaml ./deploy/

# Not root: the processes own only DAGSTER_HOME (their dagster.yaml, local step logs); /app and the
# installed packages stay root's, read-only to them. No secret is baked in: they come at run time.
RUN useradd --system --uid 10001 --home-dir /opt/dagster --shell /usr/sbin/nologin jewel \
    && mkdir -p "$DAGSTER_HOME" && chown -R jewel:jewel /opt/dagster
USER 10001

# Writes $DAGSTER_HOME/dagster.yaml from the container's environment (PostgreSQL, Celery, the worker
# count, queue limits), then runs the service's command.
ENTRYPOINT ["python", "-m", "devtools.instance_config"]
EXPOSE 3000 4000 8001 9000
