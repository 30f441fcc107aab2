# jobhook: receiver + outbox worker on SQLite. Build: docker build -t jobhook .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    JOBHOOK_CONFIG=/app/config/jobhook.docker.yaml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY receiver ./receiver
COPY notifiers ./notifiers
COPY config ./config
# asyncpg and uvloop come as manylinux wheels (x86_64 and aarch64): the slim image needs no compiler.
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 --home-dir /app jobhook \
    && mkdir -p /data \
    && chown jobhook /data

USER 10001
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
CMD ["jobhook", "serve"]
