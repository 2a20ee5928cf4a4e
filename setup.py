"""Only the optional C extension; every other setting is in pyproject.toml.

``outbox._speedups`` (outbox/_speedups.c) makes the relay's per-row record work cheaper.
It is optional: without a C compiler or Python's headers the install goes on and
``outbox.record`` uses its Python versions (the same results, slower).
"""

from setuptools import Extension, setup  # type: ignore[import-untyped]

setup(ext_modules=[Extension("outbox._speedups", ["outbox/_speedups.c"], optional=True)])
