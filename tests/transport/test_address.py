"""parse_address: what it accepts, what it refuses, and the canonical text."""

from __future__ import annotations

import pytest

from qchan.transport import Address, parse_address


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("127.0.0.1:7400", Address(host="127.0.0.1", port=7400), "127.0.0.1:7400"),
        ("0.0.0.0:0", Address(host="0.0.0.0", port=0), "0.0.0.0:0"),
        ("[::1]:80", Address(host="::1", port=80), "[::1]:80"),
        ("[::]:65535", Address(host="::", port=65535), "[::]:65535"),
        ("[::0001]:80", Address(host="::1", port=80), "[::1]:80"),
        ("[FE80::1]:9", Address(host="fe80::1", port=9), "[fe80::1]:9"),
        ("localhost:1", Address(host="localhost", port=1), "localhost:1"),
        ("Node-1.Example.COM:22", Address(host="node-1.example.com", port=22), None),
        ("worker_3.local:7400", Address(host="worker_3.local", port=7400), None),
        ("unix:/tmp/q.sock", Address(path="/tmp/q.sock"), "unix:/tmp/q.sock"),
        ("unix:relative/q.sock", Address(path="relative/q.sock"), "unix:relative/q.sock"),
        ("10.0.0.7:007", Address(host="10.0.0.7", port=7), "10.0.0.7:7"),
    ],
)
def test_accepts(text: str, expected: Address, canonical: str | None) -> None:
    address = parse_address(text)
    assert address == expected
    assert str(address) == (canonical or str(expected))
    assert parse_address(str(address)) == address
    assert address.is_unix == text.startswith("unix:")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "expected HOST:PORT or unix:/path"),
        ("x", "expected HOST:PORT or unix:/path"),
        ("host", "expected HOST:PORT or unix:/path"),
        (":80", "expected HOST:PORT or unix:/path"),
        ("host:", "expected HOST:PORT or unix:/path"),
        ("host:-1", "expected HOST:PORT or unix:/path"),
        ("host:+80", "expected HOST:PORT or unix:/path"),
        ("host: 80", "expected HOST:PORT or unix:/path"),
        ("host:80a", "expected HOST:PORT or unix:/path"),
        ("host:123456", "expected HOST:PORT or unix:/path"),
        ("host:65536", "port must be 0..65535"),
        ("host:99999", "port must be 0..65535"),
        ("::1:80", "brackets"),
        ("[::1]", "expected HOST:PORT or unix:/path"),
        ("[zz::]:80", "IPv6"),
        ("[127.0.0.1]:80", "IPv6"),
        ("999.1.1.1:80", "IPv4"),
        ("1.2.3:80", "IPv4"),
        ("a b:80", "host name"),
        ("-bad-:80", "host name"),
        ("tcp://host:80", "expected HOST:PORT or unix:/path"),
        ("unix:", "non-empty path"),
        ("unix:/a\0b", "non-empty path"),
        ("unix:/" + "x" * 200, "at most 107 bytes"),
    ],
)
def test_rejects(text: str, why: str) -> None:
    with pytest.raises(ValueError, match="bad address") as caught:
        parse_address(text)
    assert repr(text) in str(caught.value)
    assert why in str(caught.value)


def test_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        parse_address(7400)  # type: ignore[arg-type]
