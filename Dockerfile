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

# An unprivileged user; /models (registry) and /reports (retrain reports) are volumes.
RUN useradd --system --uid 10001 --home-dir /app nirwatch \
    && mkdir -p /models /reports \
    && chown nirwatch /models /reports
USER nirwatch

ENTRYPOINT ["nirwatch"]
CMD ["--help"]
