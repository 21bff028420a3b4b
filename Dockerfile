# The coordinator and gateway image used by docker-compose.yml (agents use the same package).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY agent_sdk ./agent_sdk
COPY coordinator ./coordinator
COPY gateway ./gateway
RUN pip install --no-cache-dir '.[fast,gateway]'
USER nobody
CMD ["agentbus", "coordinator"]
