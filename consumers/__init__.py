"""The idempotent-consumer runtime: inbox dedupe, handler dispatch, retries, dead letters."""
