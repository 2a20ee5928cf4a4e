"""A producer that writes exactly the bytes it is given, header names included.

confluent-kafka's ``produce()`` only takes header names as ``str`` (a ``bytes`` name is sent
as its ``repr``), so it cannot write a name that is not UTF-8 — but Java, Go or a
misbehaving client can, and confluent-kafka's ``Message.headers()`` then raises
``SystemError``. This helper calls the librdkafka that confluent-kafka bundles through
ctypes (``rd_kafka_producev``), so tests can put such records on a real broker.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from typing import Any

import confluent_kafka

# rd_kafka_vtype_t (rdkafka.h)
_END, _TOPIC, _VALUE, _KEY, _MSGFLAGS, _HEADER = 0, 1, 4, 5, 7, 9
_MSG_F_COPY = 0x2  # librdkafka copies key and value: our buffers may go away at once
_PRODUCER = 0

RawHeader = tuple[bytes, bytes | None]
RawMessage = tuple[bytes | None, bytes | None, list[RawHeader]]
# void dr_msg_cb(rd_kafka_t *, const rd_kafka_message_t *, void *opaque); the message's
# first field is its error code.
_DeliveryReport = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


def _library() -> ctypes.CDLL:
    package = os.path.dirname(confluent_kafka.__file__)
    found = sorted(glob.glob(os.path.join(package, os.pardir, "confluent_kafka.libs",
                                          "librdkafka*.so*")))
    if not found:
        raise RuntimeError(f"no bundled librdkafka next to {package} ({sys.platform})")
    lib = ctypes.CDLL(found[0])
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p,
                                 ctypes.c_size_t]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_outq_len.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_err2str.restype = ctypes.c_char_p
    lib.rd_kafka_conf_set_dr_msg_cb.argtypes = [ctypes.c_void_p, _DeliveryReport]
    return lib



def produce_raw(bootstrap: str, topic: str, messages: list[RawMessage],
                config: dict[str, str] | None = None) -> None:
    """Produce (key, value, [(name, value)]) with raw bytes everywhere and wait for the
    acknowledgements. Header names must not contain NUL (C strings)."""
    lib = _library()
    conf = lib.rd_kafka_conf_new()
    err = ctypes.create_string_buffer(512)
    for prop, setting in {"bootstrap.servers": bootstrap, "enable.idempotence": "true",
                          **(config or {})}.items():
        if lib.rd_kafka_conf_set(conf, prop.encode(), setting.encode(), err, 512) != 0:
            raise ValueError(f"{prop}={setting}: {err.value.decode()}")
    failed: list[int] = []

    def on_delivery(_rk: int | None, message: int | None, _opaque: int | None) -> None:
        code = ctypes.cast(message or 0, ctypes.POINTER(ctypes.c_int))[0]
        if code:
            failed.append(code)

    report = _DeliveryReport(on_delivery)  # kept alive until rd_kafka_destroy
    lib.rd_kafka_conf_set_dr_msg_cb(conf, report)
    rk = lib.rd_kafka_new(_PRODUCER, conf, err, 512)
    if not rk:
        raise RuntimeError(err.value.decode())
    try:
        for key, value, headers in messages:
            args: list[Any] = [ctypes.c_int(_TOPIC), ctypes.c_char_p(topic.encode()),
                               ctypes.c_int(_MSGFLAGS), ctypes.c_int(_MSG_F_COPY)]
            if value is not None:
                args += [ctypes.c_int(_VALUE), ctypes.c_char_p(value), ctypes.c_size_t(len(value))]
            if key is not None:
                args += [ctypes.c_int(_KEY), ctypes.c_char_p(key), ctypes.c_size_t(len(key))]
            for name, hvalue in headers:
                if b"\0" in name:
                    raise ValueError(f"header name {name!r} contains NUL")
                args += [ctypes.c_int(_HEADER), ctypes.c_char_p(name),
                         ctypes.c_char_p(hvalue),
                         ctypes.c_ssize_t(len(hvalue) if hvalue is not None else 0)]
            args.append(ctypes.c_int(_END))
            code = lib.rd_kafka_producev(ctypes.c_void_p(rk), *args)
            if code != 0:
                raise RuntimeError(f"produce to {topic}: {lib.rd_kafka_err2str(code).decode()}")
        lib.rd_kafka_flush(ctypes.c_void_p(rk), 30_000)
        left = lib.rd_kafka_outq_len(ctypes.c_void_p(rk))
        if left or failed:
            errors = sorted({lib.rd_kafka_err2str(code).decode() for code in failed})
            raise RuntimeError(f"produce to {topic}: {left} message(s) not acknowledged, "
                               f"{len(failed)} failed: {errors}")
    finally:
        lib.rd_kafka_destroy(ctypes.c_void_p(rk))
