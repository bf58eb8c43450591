# syntax=docker/dockerfile:1
# One image for both services: `telemetry ingest` (the default) and `telemetry stream`.
#   docker build -t telemetry-platform:0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#   docker run --rm -p 8000:8000 -e TELEMETRY_NATS_URLS=nats://nats:4222 telemetry-platform:0.1.0
#   docker run --rm -p 8001:8001 -e TELEMETRY_NATS_URLS=nats://nats:4222 telemetry-platform:0.1.0 stream
# Needs BuildKit (the default builder of current Docker) for the cache and bind mounts.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---------------------------------------------------------------------------------------------
# build: wheels of the project and of every dependency, so the runtime stage needs no compiler
# and no network access beyond this stage.
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Only what `pip wheel .` needs (pyproject names README.md as the readme); .dockerignore keeps the rest out.
COPY pyproject.toml README.md ./
COPY core ./core
COPY ingest ./ingest
COPY stream ./stream
COPY telemetry ./telemetry

RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------
# runtime: the same base image, no build tools, the wheels installed from the build stage only.
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="telemetry-platform" \
      org.opencontainers.image.description="Sensor telemetry: devices POST readings to NATS JetStream, dashboards follow them as Server-Sent Events." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12-slim-bookworm"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TELEMETRY_INGEST_HOST=0.0.0.0 \
    TELEMETRY_STREAM_HOST=0.0.0.0 \
    TELEMETRY_LOG_FORMAT=json

# A numeric, non-root user: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 telemetry \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin telemetry

# The wheels are bind-mounted, not copied, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/telemetry_platform-*.whl

# No WORKDIR: the working directory stays /, which the user cannot write.
USER 10001:10001

EXPOSE 8000 8001

# Kubernetes probes /healthz and /readyz itself; which port answers depends on the command, so the
# image declares no HEALTHCHECK of its own.
ENTRYPOINT ["telemetry"]
CMD ["ingest"]
