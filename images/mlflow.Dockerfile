# syntax=docker/dockerfile:1
# MLflow tracking server for manifests/: the official MLflow image lacks the PostgreSQL driver
# and the basic-auth app's Flask-WTF, so this one installs the server with its `auth` extra, boto3
# and psycopg2 at the versions pinned in the lock (the same MLflow the pipeline's client uses).
# Build from the repository root (docs/run-on-kubeflow.md):
#   docker build -f images/mlflow.Dockerfile -t "$REGISTRY/selfguided-mlflow:$VERSION" .

# One base for both stages: the virtual environment built in the first runs unchanged in the second.
FROM python:3.11.11-slim-bookworm AS base

FROM base AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
COPY images/requirements.lock images/mlflow-server.in /src/
RUN pip install --constraint /src/requirements.lock --requirement /src/mlflow-server.in \
 && pip check

FROM base
# A fixed non-root uid, the one manifests/ runs the server as.
RUN groupadd --gid 10001 mlflow \
 && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin mlflow
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /home/mlflow
EXPOSE 5000
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
