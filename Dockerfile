# Minimal image for now (the deployment milestone completes it): build a wheel, install it into
# a slim runtime with only runtime dependencies, run as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 linkwatch
COPY --from=build /wheels /wheels
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt /wheels/*.whl && rm -rf /wheels /tmp/constraints.txt
COPY data/sample-events.jsonl.gz /opt/linkwatch/sample-events.jsonl.gz
USER linkwatch
ENTRYPOINT ["linkwatch"]
CMD ["replay", "/opt/linkwatch/sample-events.jsonl.gz"]
