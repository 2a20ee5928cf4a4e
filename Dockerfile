# Image for the toolkit's processes in docker-compose.yml (relay and saga services).
FROM python:3.11-slim
WORKDIR /app
# setup.py builds the optional C extension (outbox/_speedups.c) where a compiler is
# present; python:3.11-slim has none, so this image uses the Python versions (the same
# records, slower: docs/relay.md, "The C extension").
COPY pyproject.toml setup.py README.md ./
COPY outbox ./outbox
COPY relay ./relay
COPY consumers ./consumers
COPY connect ./connect
COPY services ./services
RUN pip install --no-cache-dir '.[saga]'
USER nobody
