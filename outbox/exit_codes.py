"""Process exit codes of every toolkit daemon and command, in one place.

Supervisors (systemd, Kubernetes, a shell script) tell a clean stop from a problem by
these; docs/operations.md lists them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # an unexpected error (a bug: the log has the details)
EXIT_USAGE = 2  # a command-line usage error (click's own code)
EXIT_CONFIG = 3  # the configuration was rejected at start: fix it, restarting will not help
EXIT_SHUTDOWN_INCOMPLETE = 4  # stopped with deliveries unconfirmed (they are re-sent later)
EXIT_FENCED = 5  # another process joined the consumer group with this instance id
EXIT_UNAVAILABLE = 6  # the database or the broker did not answer within the start-up bound
EXIT_WORKER_DIED = 7  # a worker thread of the process stopped; the process stops with it
EXIT_INTERRUPTED = 130  # a second signal: stopped at once, without draining

__all__ = ["EXIT_CONFIG", "EXIT_ERROR", "EXIT_FENCED", "EXIT_INTERRUPTED", "EXIT_OK",
           "EXIT_SHUTDOWN_INCOMPLETE", "EXIT_UNAVAILABLE", "EXIT_USAGE", "EXIT_WORKER_DIED"]
