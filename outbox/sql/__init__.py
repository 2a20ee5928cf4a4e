"""The toolkit's SQL bodies that are more than a statement: named blocks in ``.sql`` files.

A file holds blocks that each start with a ``-- name: <name>`` line. Placeholders are
written ``{{name}}`` and filled by :func:`render` with values the caller has already made
safe for SQL (quoted identifiers, literals); nothing else in the text is touched, so the
SQL reads as it runs.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@functools.cache
def statements(filename: str) -> dict[str, str]:
    """The named blocks of ``outbox/sql/<filename>``."""
    return statements_in(HERE / filename)


@functools.cache
def statements_in(path: Path) -> dict[str, str]:
    """The named blocks of the ``.sql`` file at ``path`` (another package's SQL)."""
    parts = _NAME.split(path.read_text())
    return {name: body.strip() + "\n" for name, body in zip(parts[1::2], parts[2::2],
                                                             strict=True)}


def render(template: str, **values: str) -> str:
    """``template`` with every ``{{name}}`` replaced; a missing value is an error."""
    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"SQL placeholder {{{{{key}}}}} has no value")
        return values[key]

    return _PLACEHOLDER.sub(fill, template)


def literal(value: str) -> str:
    """``value`` as a SQL string literal (standard_conforming_strings: only ``'`` doubles)."""
    return "'" + value.replace("'", "''") + "'"


def unicode_literal(value: str) -> str:
    """``value`` as a ``U&'...'`` literal of escapes: safe to print for any character."""
    return "U&'" + "".join(f"\\{ord(c):04X}" if ord(c) <= 0xFFFF else f"\\+{ord(c):06X}"
                           for c in value) + "'"
