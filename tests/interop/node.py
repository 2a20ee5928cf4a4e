"""Node packages for the interop tests: ``npm ci`` from the committed lock file, once.

Node 20 and npm come with the machine; the packages come from the npm registry, pinned by
``package-lock.json``. A marker with the lock file's digest makes a second run (and other
pytest-xdist workers, waiting on a file lock) skip the install.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from pathlib import Path

from tests.harness.stack import service_missing


def node_project(path: Path, build: bool = False) -> Path:
    """``path`` with its ``node_modules`` installed by ``npm ci`` (and ``npm run build``)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        service_missing("Node.js", "node or npm is not on PATH")
    lock = path / "package-lock.json"
    digest = hashlib.sha256(lock.read_bytes() + (b"build" if build else b"")).hexdigest()
    marker = path / "node_modules" / ".outbox-installed"
    with open(path / ".npm-install.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        sources = sorted((path / "src").rglob("*.ts")) if build else []
        stamp = digest + "".join(f"{p}:{p.stat().st_mtime_ns}" for p in sources)
        if marker.exists() and marker.read_text() == stamp:
            return path
        _npm(path, "ci", "--no-audit", "--no-fund", "--loglevel=error")
        if build:
            _npm(path, "run", "build")
        marker.write_text(stamp)
    return path


def _npm(path: Path, *args: str) -> None:
    result = subprocess.run(["npm", *args], cwd=path, capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"npm {' '.join(args)} in {path} failed ({result.returncode}): "
                           f"{result.stderr.strip()[-2000:]}")
