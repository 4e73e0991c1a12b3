# One image for every nirwatch service (simulator, worker, training, retrain-service):
#   docker build -t nirwatch .                                   # CPU torch
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t nirwatch:gpu .
# The command is chosen at run time: docker run nirwatch worker --help
FROM python:3.11-slim AS base

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app

# torch first, from the chosen index, so the pinned version does not pull a CUDA build by default.
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0

COPY pyproject.toml README.md ./
COPY nirwatch ./nirwatch
COPY ingest ./ingest
COPY inference ./inference
COPY training ./training
COPY monitoring ./monitoring
RUN pip install . && nirwatch --version

# An unprivileged user (uid:gid 10001:10001, as docker-compose.yml's `user:`); /app stays
# root-owned and read-only to it. Every path a service writes is a volume whose mount point is
# created here, owned by that user: an empty named volume takes the mount point's owner, so
# these directories are what makes the volumes writable. Keep this list in step with the
# volumes in docker-compose.yml (tests/test_compose_container.py checks both).
RUN groupadd --system --gid 10001 nirwatch \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home nirwatch \
    && mkdir -p /models /reports /inbox /var/lib/nirwatch/audit /var/lib/nirwatch/opcua \
    && chown nirwatch:nirwatch /models /reports /inbox /var/lib/nirwatch/audit /var/lib/nirwatch/opcua
# Matplotlib (training reports) caches fonts under $HOME, which is the read-only /app.
ENV MPLCONFIGDIR=/tmp/matplotlib
USER 10001:10001

ENTRYPOINT ["nirwatch"]
CMD ["--help"]
