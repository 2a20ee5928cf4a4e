# Image for the toolkit's processes in docker-compose.yml (relay and saga services).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY outbox ./outbox
COPY relay ./relay
COPY consumers ./consumers
COPY connect ./connect
COPY services ./services
RUN pip install --no-cache-dir '.[saga]'
USER nobody
