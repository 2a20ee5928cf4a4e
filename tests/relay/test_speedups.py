"""The C versions of the record's compacting (outbox/_speedups.c) return exactly what the
Python versions in outbox.record return, for any text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outbox import record
from outbox.record import compact_json_many_python, compact_json_python


def _native() -> ModuleType:
    if record.SPEEDUPS is None:
        if os.environ.get("CI") == "true":
            pytest.fail("outbox._speedups is not built: `make venv` compiles it "
                        "(it needs cc and Python's headers)")
        pytest.skip("outbox._speedups is not built (no C compiler at install); "
                    "`make venv` builds it")
    return record.SPEEDUPS


# Any text at all, and text made of what matters to the compacting: quotes, backslashes,
# separators, every kind of whitespace (ASCII, NBSP, U+2028, U+3000), characters of each
# str storage width (Latin-1, BMP, astral).
_chars = st.sampled_from(list('ab "\\,:{}[] \t\n\r\x0b\x0c\x1c\x85\xa0é€'
                              '\u2028\u3000\U0001f600\x00'))
_texts = st.one_of(st.text(), st.text(alphabet=_chars, max_size=40))
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=_chars, max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(alphabet=_chars, max_size=6), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=1500, deadline=None)
@given(_texts)
def test_compact_json_equals_the_python_version_on_any_text(text: str) -> None:
    assert _native().compact_json(text) == compact_json_python(text)


# One-byte strings (ASCII, Latin-1) take their own path, which finds a string's end with
# memchr: long texts of only such characters, quotes and backslashes among them.
_narrow = st.text(alphabet=st.sampled_from(list('ab "\\,:{} \t\n\x85\xa0\xe9\x00')),
                  max_size=300)


@settings(max_examples=1500, deadline=None)
@given(_narrow)
def test_compact_json_of_one_byte_text_equals_the_python_version(text: str) -> None:
    assert _native().compact_json(text) == compact_json_python(text)


def test_a_long_string_of_escapes_is_compacted_in_one_pass() -> None:
    """Every escape of a 2 MB string is found without searching its closing quote again
    (a search from each of its million escapes would read ~10^12 bytes)."""
    text = '{"a": "' + '\\n' * 1_000_000 + '", "b": 1}'
    assert _native().compact_json(text) == compact_json_python(text)


@settings(max_examples=500, deadline=None)
@given(_json, st.sampled_from([None, 2]), st.booleans())
def test_compact_json_of_json_text_is_the_compact_dump(value: object, indent: int | None,
                                                       ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent)
    assert _native().compact_json(text) == json.dumps(value, ensure_ascii=ascii_only,
                                                      separators=(",", ":"))


@settings(max_examples=300, deadline=None)
@given(st.lists(_json, max_size=8))
def test_compact_json_many_equals_the_python_version(values: list[object]) -> None:
    texts = [json.dumps(v, ensure_ascii=False, indent=2) for v in values]
    assert _native().compact_json_many(texts) == compact_json_many_python(texts)


def test_the_results_are_proper_strings() -> None:
    """A result narrower than its input (a wide space dropped) is stored in its narrowest
    form, so it compares and hashes like any other string."""
    native = _native()
    for text, expected in [("[1,\u3000 2]", "[1,2]"), ("[\xa0true]", "[true]"),
                           ('["\U0001f600", 1]', '["\U0001f600",1]'), ("", ""), (" ", ""),
                           ('"a\\" b"  ', '"a\\" b"'), ('"\\\\" ', '"\\\\"')]:
        result = native.compact_json(text)
        assert result == expected and hash(result) == hash(expected)
        assert result.isascii() == expected.isascii()


def test_wrong_arguments_raise_type_errors() -> None:
    native = _native()
    with pytest.raises(TypeError):
        native.compact_json(b"{}")
    with pytest.raises(TypeError):
        native.compact_json_many(["{}", 1])


def test_outbox_speedups_0_selects_the_python_versions() -> None:
    code = ("from outbox import record; "
            "print(record.SPEEDUPS, record.compact_json is record.compact_json_python)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "OUTBOX_SPEEDUPS": "0"},
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "True"]
