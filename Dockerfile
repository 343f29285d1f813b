# Touchpoint's workers, projection writers and CLI, for docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY touchpoint ./touchpoint
COPY streams ./streams
COPY projections ./projections
COPY connectors ./connectors
COPY backbone ./backbone
COPY bench ./bench
COPY schemas ./schemas
RUN pip install --no-cache-dir .
ENTRYPOINT ["touchpoint"]
