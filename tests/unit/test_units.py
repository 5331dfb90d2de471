import pytest

from flotilla.common.units import format_duration, parse_duration


@pytest.mark.parametrize("text,seconds", [
    ("60s", 60), ("5m", 300), ("2h30m", 9000), ("90d", 7776000), ("250ms", 0.25),
    ("1.5s", 1.5), (" 10S ", 10), ("42", 42), (7, 7.0),
])
def test_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "5x", "m5", "-3s", -1, True, None, "5m garbage",
                                 "nan", "inf", "-inf", "1e400", "9" * 400 + "s",
                                 float("nan"), float("inf")])
def test_parse_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format():
    assert format_duration(7776000) == "90d"
    assert format_duration(9000) == "2h30m"
    assert format_duration(0.25) == "250ms"
    assert format_duration(0) == "0s"


from flotilla.common.units import format_bytes, parse_bytes  # noqa: E402


@pytest.mark.parametrize("text,n", [("64M", 64 * 2**20), ("512MB", 512 * 2**20), ("1g", 2**30),
                                    ("1.5G", int(1.5 * 2**30)), ("2GiB", 2 * 2**30), ("100", 100),
                                    (4096, 4096)])
def test_parse_bytes(text, n):
    assert parse_bytes(text) == n


@pytest.mark.parametrize("bad", ["", "M", "12Q", "-1M", -5, True, "9" * 400 + "T",
                                 float("inf"), float("nan")])
def test_parse_bytes_rejects(bad):
    with pytest.raises(ValueError):
        parse_bytes(bad)


def test_format_bytes():
    assert format_bytes(512 * 2**20) == "512 MB"
    assert format_bytes(1536 * 2**20) == "1.5 GB"
    assert format_bytes(10) == "10 B"
