# fx worker: `python -m fx_workers` on a slim Python, as a non-root user, without build tools.
#
#   docker build -t fx-worker:0.1.0 .          (docker compose builds it as the fx-worker service)
#
# Only the runtime dependencies (requirements-worker.txt, no Airflow) go in, as wheels: the build
# stage fills a virtualenv and the runtime stage copies just that virtualenv.

FROM python:3.11.14-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY requirements-worker.txt /tmp/requirements-worker.txt
RUN pip install --only-binary=:all: --requirement /tmp/requirements-worker.txt

COPY pyproject.toml README.md /src/
COPY fx_workers/ /src/fx_workers/
RUN pip install --no-deps /src


FROM python:3.11.14-slim-bookworm

RUN groupadd --system --gid 10001 fx \
    && useradd --system --uid 10001 --gid fx --no-create-home --home-dir /nonexistent fx

COPY --from=build /opt/venv /opt/venv
COPY config.yaml /opt/fx/config.yaml

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FX_CONFIG=/opt/fx/config.yaml
WORKDIR /opt/fx
USER 10001:10001

# The worker stops gracefully on SIGTERM (`docker compose stop`); its id defaults to the hostname,
# which is unique per container, so `--scale fx-worker=N` needs no per-replica settings.
ENTRYPOINT ["python", "-m", "fx_workers"]
CMD []
