# syntax=docker/dockerfile:1
# The model-serving image: dependencies built from pyproject.toml in a builder stage, a
# slim runtime running as a non-root user, the shipped models baked in at /app/models
# (mount a volume there to serve others).
#   docker build -t keras-serve .
#   docker build --build-arg TF_VARIANT=gpu -t keras-serve:gpu .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG TF_VARIANT=cpu
ARG TF_VERSION=2.21.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY modelcard ./modelcard
COPY training ./training
COPY service ./service
# The project and the dependencies its pyproject.toml declares; the GPU build swaps the
# CPU TensorFlow wheel for the CUDA one of the same version.
RUN pip install . \
    && if [ "${TF_VARIANT}" = "gpu" ]; then \
         pip uninstall --yes tensorflow-cpu \
         && pip install "tensorflow[and-cuda]==${TF_VERSION}"; \
       fi

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_DIR=/app/models \
    RUNTIME_CACHE_DIR=/var/cache/keras-serve
# RUNTIME_CACHE_DIR: exports made at load and the runtime decisions (service/runtimes.py); a volume
# there lets a restarted container skip timing the runtimes again
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
    && mkdir -p /var/cache/keras-serve && chown app:app /var/cache/keras-serve
WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
COPY --chown=app:app models /app/models
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "service.healthcheck"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
