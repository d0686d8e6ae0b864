"""The ClientHello SNI parser (sidecar.engine.clienthello): real hellos from the stdlib's ssl module, whole, split
into records and cut at every byte, hand-built broken ones, and fuzz (never raises, asks only for bounded more)."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.engine.clienthello import MAX_HELLO, MAX_WIRE, Hello, dns_name, parse
from tests.unit.fuzzing import FUZZ


def real_hello(server_hostname: str | None = None) -> bytes:
    """The ClientHello the stdlib's TLS client sends (OpenSSL's), as it would go on the wire."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def records(hello: bytes, size: int) -> bytes:
    """`hello`'s handshake message re-framed into records of at most `size` bytes each (a split ClientHello)."""
    message = hello[5:5 + int.from_bytes(hello[3:5], "big")]
    out = b""
    for at in range(0, len(message), size):
        chunk = message[at:at + size]
        out += b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk
    return out


def hello_with(extensions: bytes, *, session: bytes = b"") -> bytes:
    body = (b"\x03\x03" + b"\x00" * 32 + bytes([len(session)]) + session + b"\x00\x02\x13\x01" + b"\x01\x00"
            + len(extensions).to_bytes(2, "big") + extensions)
    message = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(message).to_bytes(2, "big") + message


def sni_extension(*names: tuple[int, bytes]) -> bytes:
    entries = b"".join(bytes([kind]) + len(n).to_bytes(2, "big") + n for kind, n in names)
    data = len(entries).to_bytes(2, "big") + entries
    return b"\x00\x00" + len(data).to_bytes(2, "big") + data


def test_a_real_hello_with_and_without_a_server_name() -> None:
    assert parse(real_hello("API.Example.com")) == Hello("sni", host="api.example.com")
    assert parse(real_hello()) == Hello("none")
    assert parse(real_hello("127.0.0.1")) == Hello("none")  # the stdlib sends no SNI for an IP address


def test_every_prefix_asks_for_more_and_no_more_than_the_rest() -> None:
    hello = real_hello("api.example.com")
    for cut in range(len(hello)):
        answer = parse(hello[:cut])
        assert answer.status == "more" and cut < answer.need <= len(hello), cut


@pytest.mark.parametrize("size", [1, 7, 100, 512])
def test_a_hello_split_across_records_is_read_whole(size: int) -> None:
    split = records(real_hello("api.example.com"), size)
    assert parse(split) == Hello("sni", host="api.example.com")
    assert parse(split[:-1]).status == "more" and parse(split[:-1]).need == len(split)


def test_bytes_after_the_hello_are_ignored() -> None:
    assert parse(real_hello("api.example.com") + b"\x14\x03\x03\x00\x01\x01").host == "api.example.com"


def test_a_post_quantum_sized_hello_is_read_and_an_oversized_one_refused() -> None:
    padding = b"\x00\x15" + (1800).to_bytes(2, "big") + b"\x00" * 1800  # like an ML-KEM key share's size
    big = hello_with(sni_extension((0, b"api.example.com")) + padding)
    assert parse(records(big, 1000)) == Hello("sni", host="api.example.com")
    huge = hello_with(sni_extension((0, b"api.example.com")) + b"\x00\x15" + (MAX_HELLO).to_bytes(2, "big")
                      + b"\x00" * MAX_HELLO)
    assert parse(records(huge, 16384)[:10]).status == "malformed"  # the declared length is enough to refuse


@pytest.mark.parametrize("data, reason", [
    (b"GET / HTTP/1.1\r\n", "not a TLS handshake record"),
    (b"\x15\x03\x01\x00\x02\x02\x28", "not a TLS handshake record"),  # an alert
    (b"\x16\x03\x01\x00\x00", "a record of a bad length"),
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),  # a ServerHello
    (hello_with(sni_extension((0, b"a.example"), (0, b"b.example"))), "two host names"),
    (hello_with(sni_extension((0, b"api.example.com."))), "no DNS host name"),
    (hello_with(sni_extension((0, b"api.example.com\x00evil"))), "no DNS host name"),
    (hello_with(sni_extension((0, b"10.0.0.1"))), "no DNS host name"),
    (hello_with(sni_extension((0, b"a.example")) + sni_extension((0, b"b.example"))), "extension 0 twice"),
    (hello_with(b"\x00\x00\x00\x05\x00\x03\x00\x00\x01"), "a broken server_name list"),
    (hello_with(b"", session=b"x" * 33), "a broken ClientHello"),
])
def test_broken_hellos_are_malformed(data: bytes, reason: str) -> None:
    answer = parse(data)
    assert answer.status == "malformed" and reason in answer.reason, answer


def test_other_name_types_are_no_sni() -> None:
    assert parse(hello_with(sni_extension((1, b"whatever")))) == Hello("none")
    assert parse(hello_with(b"\x00\x17\x00\x00")) == Hello("none")  # extensions, none of them SNI


def test_dns_names() -> None:
    assert dns_name(b"API.example.COM") == "api.example.com" and dns_name(b"_svc.a-b.example") == "_svc.a-b.example"
    for bad in (b"", b"-a.example", b"a..example", b"a" * 64 + b".example", b"caf\xc3\xa9.example", b"a b.example",
                b"1.2.3.4", b".example", (b"a." * 127) + b"ab"):
        assert dns_name(bad) is None, bad


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_give_an_answer_and_never_ask_for_unbounded_more(data: bytes) -> None:
    answer = parse(data)
    assert answer.status in ("more", "sni", "none", "malformed")
    if answer.status == "more":
        assert len(data) < answer.need <= MAX_WIRE
    if answer.status == "sni":
        assert dns_name(answer.host.encode()) == answer.host


@FUZZ
@given(st.data())
def test_a_real_hello_mutated_never_raises(data: st.DataObject) -> None:
    hello = bytearray(records(real_hello("api.example.com"), data.draw(st.integers(50, 600))))
    for _ in range(data.draw(st.integers(1, 4))):
        hello[data.draw(st.integers(0, len(hello) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(hello)))
    answer = parse(bytes(hello[:cut]))
    assert answer.status != "more" or cut < answer.need <= MAX_WIRE
