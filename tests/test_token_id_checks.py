"""The servers' prompt token-id check against the rule it implements: a copy of the ids when
every one is an integer in [0, limit), else a 400 naming the parameter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from preble.http.errors import checked_token_ids
from preble.http.openai import APIError


@given(st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=50), st.integers(1, 2**40))
def test_ids_in_range_are_copied_and_any_other_is_a_400(ids, limit):
    in_range = all(0 <= i < limit for i in ids)
    if in_range:
        out = checked_token_ids(ids, limit, "prompt")
        assert out == ids and out is not ids
    else:
        with pytest.raises(APIError) as err:
            checked_token_ids(ids, limit, "prompt")
        assert err.value.status == 400 and err.value.body()["error"]["param"] == "prompt"


def test_non_integers_are_a_400_and_tuples_are_accepted():
    for bad in ([1.5], ["3"], [None], [True]):
        with pytest.raises(APIError):
            checked_token_ids(bad, 10, "input_ids")
    assert checked_token_ids((4, 5), 10, "input_ids") == [4, 5]
