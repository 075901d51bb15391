"""The shared field reader: its rules, whichever dialect words the errors."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

from rakka_inference.api.anthropic_fields import read as anthropic
from rakka_inference.api.fields import MAX_JSON_DEPTH, Expected, FieldReader, JsonPath, is_http_url
from rakka_inference.api.openai_fields import read as openai
from rakka_inference.core.errors import BadRequest, PayloadTooLarge
from rakka_inference.core.json_depth import too_deep


class Recording:
    """A wording that says which rule failed, so the tests check the rules, not the words."""

    def missing(self, param: str) -> BadRequest:
        return BadRequest("missing", param=param)

    def wrong_type(self, param: str, expected: Expected, value: object) -> BadRequest:
        return BadRequest(f"not {expected}", param=param)

    def empty_string(self, param: str) -> BadRequest:
        return BadRequest("empty string", param=param)

    def empty_array(self, param: str) -> BadRequest:
        return BadRequest("empty array", param=param)

    def out_of_range(self, param: str, low: float, high: float) -> BadRequest:
        return BadRequest(f"outside {low}..{high}", param=param)

    def not_json(self) -> BadRequest:
        return BadRequest("not json")

    def not_an_object(self, document: object) -> BadRequest:
        return BadRequest("not an object")

    def too_deep(self, path: JsonPath, limit: int) -> BadRequest:
        return BadRequest(f"deeper than {limit}", param=repr(list(path)))

    def too_many_items(self, param: str, limit: int, length: int) -> BadRequest:
        return BadRequest(f"{length} items, more than {limit}", param=param)

    def integer_below(self, param: str, low: int, value: int) -> BadRequest:
        return BadRequest(f"{value} below {low}", param=param)

    def integer_above(self, param: str, high: int, value: int) -> BadRequest:
        return BadRequest(f"{value} above {high}", param=param)


read = FieldReader(Recording())


def failure(call: Callable[..., object], *args: Any, **kwargs: Any) -> tuple[str, str | None]:
    """The message and ``param`` of the BadRequest that ``call`` raises."""
    with pytest.raises(BadRequest) as caught:
        call(*args, **kwargs)
    return caught.value.message, caught.value.param


def test_null_is_absent_for_every_optional_field() -> None:
    for check in (read.string, read.integer, read.number, read.boolean):
        assert check(None, "x") is None


def test_a_required_string_is_present_then_a_string_then_not_empty() -> None:
    assert read.required_string("a", "p") == "a"
    assert failure(read.required_string, None, "p") == ("missing", "p")
    assert failure(read.required_string, 3, "p") == ("not string", "p")
    assert failure(read.required_string, "", "p") == ("empty string", "p")


def test_a_boolean_is_not_a_number() -> None:
    assert failure(read.integer, True, "n") == ("not integer", "n")
    assert failure(read.number, False, "t") == ("not number", "t")
    assert read.number(1, "t") == 1.0
    assert isinstance(read.number(1, "t"), float)
    assert failure(read.integer, 1.5, "n") == ("not integer", "n")


def test_a_range_refuses_nan_and_takes_its_bounds() -> None:
    assert read.number(0, "t", low=0.0, high=1.0) == 0.0
    assert read.number(1, "t", low=0.0, high=1.0) == 1.0
    assert failure(read.number, 1.5, "t", low=0.0, high=1.0) == ("outside 0.0..1.0", "t")
    assert failure(read.number, math.nan, "t", low=0.0, high=1.0) == ("outside 0.0..1.0", "t")


def test_arrays_and_objects() -> None:
    assert read.array([], "a") == []
    assert failure(read.array, [], "a", non_empty=True) == ("empty array", "a")
    assert failure(read.array, {}, "a") == ("not array", "a")
    assert read.mapping({"k": 1}, "o") == {"k": 1}
    assert failure(read.mapping, [], "o") == ("not object", "o")
    assert failure(read.boolean, "yes", "b") == ("not boolean", "b")


def test_the_document() -> None:
    assert read.document(b'{"a":1}') == {"a": 1}
    assert failure(read.document, b"{") == ("not json", None)
    assert failure(read.document, b"[1]") == ("not an object", None)
    with pytest.raises(PayloadTooLarge):
        read.document(b'{"a":1}', max_body_bytes=3)


def test_the_document_nests_at_most_the_limit() -> None:
    def nested(levels: int) -> bytes:  # the body and ``levels - 1`` arrays inside
        return b'{"k":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"

    assert read.document(nested(MAX_JSON_DEPTH))["k"]
    path = ["k", *[0] * (MAX_JSON_DEPTH - 1)]
    assert failure(read.document, nested(MAX_JSON_DEPTH + 1)) == (
        f"deeper than {MAX_JSON_DEPTH}",
        repr(path),
    )


def test_the_depth_walk_names_the_first_path_and_scalars_do_not_count() -> None:
    deep = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    body = b'{"a": [1, "x", {"b": null}], "z": {"y": [0, ' + deep + b"]}, " + b'"w": ' + deep + b"}"
    _, param = failure(read.document, body)
    assert param == repr(["z", "y", 1, *[0] * (MAX_JSON_DEPTH - 3)])


@pytest.mark.parametrize(
    ("reader", "expected"),
    [
        (openai, "Invalid type for 'p': expected a boolean, but got a string instead."),
        (anthropic, "p: Input should be a valid boolean"),
    ],
)
def test_each_dialect_words_the_same_rule_its_own_way(reader: FieldReader, expected: str) -> None:
    assert failure(reader.boolean, "yes", "p") == (expected, "p")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/a.png", True),
        ("HTTP://example.com/a.png", True),
        ("ftp://example.com/a.png", False),
        ("data:image/png;base64,AAAA", False),
    ],
)
def test_is_http_url(url: str, expected: bool) -> None:
    assert is_http_url(url) is expected


def test_an_integer_read_with_bounds_is_refused_outside_them() -> None:
    assert read.integer(5, "n", low=1, high=5) == 5
    assert read.integer(1, "n", low=1) == 1
    assert read.integer(2**64 - 1, "n") == 2**64 - 1  # no bound asked: any integer
    assert failure(read.integer, 0, "n", low=1, high=5) == ("0 below 1", "n")
    assert failure(read.integer, 6, "n", low=1, high=5) == ("6 above 5", "n")
    assert failure(read.integer, 2**63, "seed", high=2**63 - 1) == (
        f"{2**63} above {2**63 - 1}",
        "seed",
    )
    assert read.integer(None, "n", low=1, high=5) is None


def test_an_array_read_with_a_maximum_is_refused_past_it() -> None:
    assert read.array([1, 2], "tools", max_items=2) == [1, 2]
    assert failure(read.array, [1, 2, 3], "tools", max_items=2) == (
        "3 items, more than 2",
        "tools",
    )


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda reader: reader.integer(129, "n", high=128),
            (
                "Invalid 'n': integer above maximum value. Expected a value <= 128, but got "
                "129 instead.",
                "p: Input should be less than or equal to 128",
            ),
        ),
        (
            lambda reader: reader.integer(0, "n", low=1),
            (
                "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 "
                "instead.",
                "p: Input should be greater than or equal to 1",
            ),
        ),
        (
            lambda reader: reader.array([0] * 3, "n", max_items=2),
            (
                "Invalid 'n': array too long. Expected an array with maximum length 2, but "
                "got an array with length 3 instead.",
                "p: List should have at most 2 items after validation, not 3",
            ),
        ),
    ],
)
def test_each_dialect_words_a_bound_its_own_way(
    call: Callable[[FieldReader], object], expected: tuple[str, str]
) -> None:
    assert failure(call, openai)[0] == expected[0]
    anthropic_words = failure(call, anthropic)[0]
    assert anthropic_words == expected[1].replace("p:", "n:")


def test_the_depth_walk_takes_any_json_value() -> None:
    assert too_deep("text", 1) is None
    assert too_deep([[1]], 2) is None
    assert too_deep([[[1]]], 2) == (0, 0)
    assert too_deep({"a": [{"b": {}}]}, 3) == ("a", 0, "b")
