# LinkWatch image: the `linkwatch` command, running the live worker by default.
#   docker build -t linkwatch:0.1.0 .
#   docker run --rm linkwatch:0.1.0 replay /opt/linkwatch/sample-events.jsonl.gz   # offline smoke run
# Stage 1 builds a virtualenv with the package and its runtime dependencies only (pinned by
# constraints.txt, no [dev] extra); stage 2 copies that virtualenv into a clean slim image.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --quiet pip==25.3
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
# Every runtime dependency ships a manylinux wheel (rocksdict included), so no compiler is needed.
RUN /opt/venv/bin/pip install --quiet -c constraints.txt . \
    && /opt/venv/bin/python -c "import linkwatch.cli, rocksdict"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LINKWATCH_STORE=rocksdb:// \
    LINKWATCH_DATA_DIR=/var/lib/linkwatch \
    LINKWATCH_WEB_HOST=0.0.0.0 \
    LINKWATCH_WEB_PORT=6066
# The state directory exists and belongs to the user, so a fresh named volume inherits that owner.
RUN groupadd --system --gid 10001 linkwatch \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/linkwatch linkwatch \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/linkwatch
COPY --from=build /opt/venv /opt/venv
COPY data/sample-events.jsonl.gz /opt/linkwatch/sample-events.jsonl.gz
# Numeric: Kubernetes' runAsNonRoot can only verify a numeric user.
USER 10001:10001
WORKDIR /var/lib/linkwatch
VOLUME ["/var/lib/linkwatch"]
EXPOSE 6066
# /healthz answers once the web server is up; urlopen raises (exit 1) on refusal or non-2xx.
# The simulator runs the same image without a web server: its compose service disables this.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LINKWATCH_WEB_PORT', '6066'), timeout=4)"
ENTRYPOINT ["linkwatch"]
CMD ["worker"]
