import json

import pytest

from flotilla.common.jsonbody import dumps_line


def test_a_body_is_one_line_of_json_that_reads_back_the_same():
    value = {"id": "t1", "slot": 3, "spec": {"command": ["sleep", "1"], "env": []},
             "ratio": 0.5, "ok": True, "none": None, "name": "häfen ⚓"}
    data = dumps_line(value)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data) == value


def test_keys_that_are_not_strings_and_tuples_encode_as_the_standard_library_does():
    value = {1: (1, 2), "a": [3]}
    assert json.loads(dumps_line(value)) == json.loads(json.dumps(value))


def test_an_integer_wider_than_64_bits_is_still_encoded():
    assert json.loads(dumps_line({"n": 2 ** 70})) == {"n": 2 ** 70}


def test_an_unpaired_surrogate_and_deep_nesting_are_still_encoded():
    assert json.loads(dumps_line({"s": "a\ud800"})) == {"s": "a\ud800"}
    deep = []
    for _ in range(300):
        deep = [deep]
    assert json.loads(dumps_line(deep)) == deep


def test_a_value_json_cannot_hold_is_a_type_error():
    with pytest.raises(TypeError):
        dumps_line({"s": {1, 2}})
