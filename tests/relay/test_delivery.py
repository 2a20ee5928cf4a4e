"""relay.delivery.classify: which rows of a settled batch count as delivered (no Kafka)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.delivery import Batch, Failure, Stage, attribute_failures, classify
from relay.rows import AGGREGATEID, AGGREGATETYPE, SEQ, SHARD, Row


def make_row(seq: int, aggregate: int, payload: str | None = '{"n": 1}') -> Row:
    return (f"id-{seq}", "order", f"agg-{aggregate}", "Created", payload, 1000 + seq, None,
            None, None, None, seq, aggregate % 4, 0)


failures = st.one_of(
    st.none(),
    st.builds(Failure, st.sampled_from(list(Stage)), st.booleans(), st.just("boom")))


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    aggregates = draw(st.lists(st.integers(0, 4), min_size=0, max_size=30))
    rows = [make_row(seq, agg) for seq, agg in enumerate(aggregates, start=1)]
    errors = {i: f for i in range(len(rows)) if (f := draw(failures)) is not None}
    isolated = {i for i in errors if draw(st.booleans())}
    return Batch(group=0, rows=rows, fast_path=draw(st.booleans()), read=rows, errors=errors,
                 isolated=isolated)


def key(row: Row) -> tuple[str, str]:
    return (row[AGGREGATETYPE], row[AGGREGATEID])


@given(batches())
def test_every_row_is_in_exactly_one_lane(batch: Batch) -> None:
    out = classify(batch)
    lanes = (out.delivered + [r for r, _ in out.failures] + out.suspects + out.transient
             + out.followers)
    assert sorted(r[SEQ] for r in lanes) == [r[SEQ] for r in batch.rows]


@given(batches())
def test_nothing_after_an_aggregates_first_failure_counts_as_delivered(batch: Batch) -> None:
    out = classify(batch)
    first_failed: dict[tuple[str, str], int] = {}
    for index, row in enumerate(batch.rows):
        if index in batch.errors:
            first_failed.setdefault(key(row), row[SEQ])
    for row in out.delivered:
        assert row[SEQ] < first_failed.get(key(row), row[SEQ] + 1)
    for row in out.followers:
        assert row[SEQ] > first_failed[key(row)]
    assert set(out.heads) == set(first_failed)


@given(batches())
def test_the_kind_of_failure_decides_its_lane(batch: Batch) -> None:
    out = classify(batch)
    by_seq = {row[SEQ]: index for index, row in enumerate(batch.rows)}
    for row in out.suspects:  # a permanent delivery error of a row sent with others
        error = batch.errors[by_seq[row[SEQ]]]
        assert error.permanent and error.stage is Stage.DELIVERY
        assert by_seq[row[SEQ]] not in batch.isolated
        assert out.heads[key(row)] is False
    for row, message in out.failures:  # recorded on the row: its own fault
        error = batch.errors[by_seq[row[SEQ]]]
        assert error.permanent and message == error.message
        assert error.stage is not Stage.DELIVERY or by_seq[row[SEQ]] in batch.isolated
        assert out.heads[key(row)] is True
    for row in out.transient:
        assert not batch.errors[by_seq[row[SEQ]]].permanent
    assert len(out.transient_messages) == len(out.transient)


@given(batches())
def test_the_window_is_read_again_from_the_earliest_retried_row(batch: Batch) -> None:
    out = classify(batch)
    retried = [(r[SHARD], r[SEQ]) for r in out.suspects + out.transient]
    expected = min(retried) if retried and batch.fast_path else None  # first in stream order
    assert out.reread == expected


@given(st.lists(st.integers(0, 4), max_size=30), st.booleans())
def test_a_batch_without_errors_is_delivered_whole(aggregates: list[int], fast: bool) -> None:
    rows = [make_row(seq, agg) for seq, agg in enumerate(aggregates, start=1)]
    out = classify(Batch(group=0, rows=rows, fast_path=fast))
    assert out.delivered == rows and out.reread is None and not out.heads


def test_failed_reports_are_traced_back_to_the_rows_with_their_key_and_value() -> None:
    rows = [make_row(1, 1, '{"a": 1}'), make_row(2, 2, '{"a": 1}'), make_row(3, 1, '{"a": 2}'),
            make_row(4, 1, None)]
    batch = Batch(group=0, rows=rows,
                  failed_reports=[(b"agg-1", b'{"a":2}', False, "delivery: timed out"),
                                  (b"agg-1", None, True, "delivery: too large")])
    attribute_failures(batch)
    assert batch.errors == {2: Failure(Stage.DELIVERY, False, "delivery: timed out"),
                            3: Failure(Stage.DELIVERY, True, "delivery: too large")}
    assert batch.failed_reports == []
