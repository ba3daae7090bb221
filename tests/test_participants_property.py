"""Property-based tests (hypothesis) for participants-table parsing."""

from __future__ import annotations

import math

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from common.data.manifest import Exclusions, parse_age
from common.data.sources import read_participants_table

ages = st.floats(min_value=0, max_value=120, allow_nan=False, allow_infinity=False)


@given(ages, st.sampled_from([".", ","]), st.integers(min_value=0, max_value=4))
def test_parse_age_roundtrips_any_decimal_mark(age, mark, digits):
    text = f"{age:.{digits}f}".replace(".", mark)
    assert math.isclose(parse_age(text), round(age, digits), abs_tol=1e-9)
    assert math.isclose(parse_age(f"  {text}\t"), round(age, digits), abs_tol=1e-9)


@given(st.sampled_from(["n/a", "N/A", "", "nan", "NaN", "na", "-", "None"]))
def test_parse_age_missing_markers(marker):
    assert math.isnan(parse_age(marker))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=1, max_value=30), st.one_of(ages, st.just(float("nan")))),
                min_size=1, max_size=40))
def test_participants_table_drops_every_duplicated_id_and_keeps_the_rest(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("t") / "participants.tsv"
    ids = [f"sub-{i:02d}" for i, _ in rows]
    pd.DataFrame({"participant_id": ids, "age": ["n/a" if math.isnan(a) else f"{a}" for _, a in rows]}).to_csv(
        path, sep="\t", index=False)
    exclusions = Exclusions()
    table = read_participants_table(path, "participant_id", exclusions, "prop")
    counts = pd.Series(ids).value_counts()
    assert set(table["participant_id"]) == set(counts[counts == 1].index)
    assert {r["item"] for r in exclusions.rows} == set(counts[counts > 1].index)
    assert table["participant_id"].is_unique
