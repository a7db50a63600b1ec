# feedsvc service image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md config.yaml ./
COPY feedsvc ./feedsvc
COPY schemas ./schemas
RUN pip install --no-cache-dir .
# In a container, tcp endpoints must listen on all interfaces to be reachable from the host.
ENTRYPOINT ["feedsvc", "serve", "--config", "/app/config.yaml", \
    "--set", "publisher.endpoints=[ipc:///tmp/feedsvc/ticks, tcp://0.0.0.0:5556]", \
    "--set", "ingest.endpoint=tcp://0.0.0.0:5557", \
    "--set", "sync.endpoint=tcp://0.0.0.0:5558"]
EXPOSE 5556 5557 5558 9108
