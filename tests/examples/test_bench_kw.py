"""The benchmarks' ``--kw METHOD=JSON`` option (bench_quality, bench_throughput): keywords per
method, and a clear error naming --kw for an unknown method or JSON that is not an object."""

from __future__ import annotations

import pytest
from bench_loader import load_benchmark


@pytest.fixture(scope="module")
def method_keywords():
    return load_benchmark("bench_quality").method_keywords


def _error(message):
    raise ValueError(message)


def test_keywords_per_method_merged_in_order(method_keywords):
    got = method_keywords(['a={"x": 1}', 'b={"y": [2]}', 'a={"x": 3, "z": null}'], ("a", "b", "c"), _error)
    assert got == {"a": {"x": 3, "z": None}, "b": {"y": [2]}, "c": {}}
    assert method_keywords([], ("a",), _error) == {"a": {}}


@pytest.mark.parametrize("item", ['d={"x": 1}', '{"x": 1}', "a={x: 1}", "a=[1]", "a=3", "a="])
def test_bad_items_name_the_option(method_keywords, item):
    with pytest.raises(ValueError, match="--kw"):
        method_keywords([item], ("a", "b"), _error)
