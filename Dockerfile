# syntax=docker/dockerfile:1
# Build: docker build -t orbit-exports .   Run: see docker-compose.yml.

# --- build stage: a virtualenv with the project and its dependencies ---------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations
# The same package `make test` installs (there in editable mode, with the dev extras).
RUN pip install .

# --- runtime stage: no compilers, no sources, an unprivileged user -----------------------
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000
RUN groupadd --system --gid 10001 orbit \
    && useradd --system --uid 10001 --gid orbit --home-dir /srv --no-create-home orbit \
    && mkdir -p /srv && chown orbit:orbit /srv
COPY --from=build /opt/venv /opt/venv
WORKDIR /srv
USER orbit
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status == 200 else 1)"]
# Exec form: uvicorn is PID 1's only child-free process and receives SIGTERM directly.
CMD ["orbit-exports", "serve", "--host", "0.0.0.0", "--port", "8000"]
