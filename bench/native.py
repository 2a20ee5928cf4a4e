"""The native librdkafka producer of bench/relay.py: build it, feed it records, run it.

``bench/native/producer.c`` is compiled on demand with the machine's C compiler against
Debian's ``librdkafka-dev`` headers (``apt-get install librdkafka-dev``). By default it is
linked to the very librdkafka that confluent-kafka's wheel ships (the relay's own
library), so relay and ceiling differ in the language around the library, not in its
version; ``lib="system"`` links Debian's instead.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import confluent_kafka

HERE = Path(__file__).resolve().parent / "native"
SOURCE = HERE / "producer.c"
HEADER = Path("/usr/include/librdkafka/rdkafka.h")


class NativeUnavailableError(RuntimeError):
    """The native producer cannot be built here; the message says what to install."""


def wheel_library() -> Path | None:
    """The librdkafka shared object inside confluent-kafka's wheel, if it ships one."""
    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*")) if libs.is_dir() else []
    return found[0] if found else None


def build(lib: str = "wheel") -> Path:
    """The compiled producer for ``lib`` (``wheel`` or ``system``), rebuilt if stale."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise NativeUnavailableError("no C compiler: apt-get install gcc (or leave out the "
                                "native contender: --contenders raw,relay)")
    if not HEADER.exists():
        raise NativeUnavailableError(f"{HEADER} is missing: apt-get install librdkafka-dev (or "
                                "leave out the native contender: --contenders raw,relay)")
    if lib == "wheel":
        shared = wheel_library()
        if shared is None:
            raise NativeUnavailableError("confluent-kafka ships no librdkafka here: use "
                                    "--native-lib system")
        link = [str(shared), f"-Wl,-rpath,{shared.parent}"]
    elif lib == "system":
        link = ["-lrdkafka"]
    else:
        raise NativeUnavailableError(f"--native-lib {lib!r}: use wheel or system")
    out = HERE / "build" / f"producer-{lib}"
    if out.exists() and out.stat().st_mtime >= SOURCE.stat().st_mtime:
        return out
    out.parent.mkdir(exist_ok=True)
    result = subprocess.run([compiler, "-O2", "-Wall", "-o", str(out), str(SOURCE), *link],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise NativeUnavailableError(f"building {SOURCE.name} failed: {result.stderr.strip()}")
    return out


def write_records(path: Path, records: Iterable[tuple[str, str | None,
                                                      list[tuple[str, str]], int]]) -> int:
    """Write (key, value, headers, timestamp_ms) records in the producer's file format."""
    count = 0
    with path.open("wb") as f:
        for key, value, headers, ts in records:
            k, v = key.encode(), (value or "").encode()
            parts = [struct.pack("<I", len(k)), k, struct.pack("<I", len(v)), v,
                     struct.pack("<qH", ts, len(headers))]
            for name, text in headers:
                n, t = name.encode(), text.encode()
                parts += [struct.pack("<H", len(n)), n, struct.pack("<I", len(t)), t]
            f.write(b"".join(parts))
            count += 1
    return count


def write_config(path: Path, config: dict[str, str]) -> None:
    path.write_text("".join(f"{k}={v}\n" for k, v in config.items()))


def produce(binary: Path, records: Path, config: Path, topic: str,
            warm_topic: str) -> dict[str, Any]:
    """Run the producer once (warmed on ``warm_topic``); its report plus ``spawned_at``."""
    spawned = time.time()
    result = subprocess.run([str(binary), str(records), str(config), topic, warm_topic],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"native producer failed ({result.returncode}): "
                           f"{(result.stderr or result.stdout).strip()}")
    report: dict[str, Any] = json.loads(result.stdout)
    report["spawned_at"] = spawned
    return report
