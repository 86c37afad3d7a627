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

COPY dagster.postgres.yaml dagster.celery.yaml deploy/workspace.docker.yaml ./deploy/
RUN mkdir -p "$DAGSTER_HOME" && cp deploy/dagster.postgres.yaml "$DAGSTER_HOME/dagster.yaml"
# Scale-out (docker-compose.scaleout.yml): dagster.celery.yaml's blocks replace the same ones.
RUN mkdir -p /opt/dagster/home-celery && python -c "import yaml; c = yaml.safe_load(open('deploy/dagster.postgres.yaml')); \
c.update(yaml.safe_load(open('deploy/dagster.celery.yaml'))); yaml.safe_dump(c, open('/opt/dagster/home-celery/dagster.yaml', 'w'), sort_keys=False)"

EXPOSE 3000 4000 8001 9000
