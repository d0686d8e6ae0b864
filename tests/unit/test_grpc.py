"""gRPC's pieces outside the proxy: status names and numbers, grpc-timeout, Envoy's HTTP-to-gRPC mapping, the
retry conditions a gRPC answer meets, and the config that reaches them (abort.grpcStatus, retryOn)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshctl.config.resources import check_document
from sidecar import grpc
from sidecar.engine.route import abort_response
from sidecar.policy import RetryPolicy


@pytest.mark.parametrize(("value", "code"), [
    ("UNAVAILABLE", 14), ("OK", 0), ("UNAUTHENTICATED", 16), (14, 14), ("14", 14), (0, 0),
    ("unavailable", None), ("17", None), (17, None), (-1, None), ("", None), (True, None), ("١٤", None),
])
def test_status_code_takes_istios_names_and_numbers(value: Any, code: int | None) -> None:
    assert grpc.status_code(value) == code


@pytest.mark.parametrize(("value", "seconds"), [
    (b"100m", 0.1), (b"1S", 1.0), (b"2M", 120.0), (b"1H", 3600.0), (b"5000u", 0.005), (b"99999999n", 0.099999999),
    (b"", None), (None, None), (b"1s", None), (b"123456789S", None), (b"-1S", None), (b"1.5S", None), (b"S", None),
])
def test_grpc_timeout_is_parsed_as_the_spec_says(value: bytes | None, seconds: float | None) -> None:
    assert grpc.timeout_of(value) == (pytest.approx(seconds) if seconds is not None else None)


@given(st.binary(max_size=20))
def test_grpc_timeout_never_raises(value: bytes) -> None:
    result = grpc.timeout_of(value)
    assert result is None or result >= 0


@pytest.mark.parametrize(("status", "code"), [(400, 13), (401, 16), (403, 7), (404, 12), (429, 14), (502, 14),
                                              (503, 14), (504, 14), (500, 2), (418, 2)])
def test_http_statuses_map_as_envoy_maps_them(status: int, code: int) -> None:
    assert grpc.from_http(status) == code


@pytest.mark.parametrize("content_type", ["application/grpc", "application/grpc+proto", "Application/GRPC",
                                          "application/grpc; charset=utf-8"])
def test_grpc_content_types(content_type: str) -> None:
    assert grpc.is_grpc(content_type) and grpc.is_grpc(content_type.encode())


@pytest.mark.parametrize("content_type", [None, "", "application/grpc-web", "application/json", "text/grpc"])
def test_not_grpc(content_type: str | None) -> None:
    assert not grpc.is_grpc(content_type)


@given(st.text(max_size=50))
def test_grpc_message_is_always_a_valid_header_value(text: str) -> None:
    value = grpc.message_value(text)
    assert all(0x20 <= b < 0x7f for b in value)


@pytest.mark.parametrize(("retry_on", "status", "retried"), [
    ("unavailable", 14, True), ("unavailable", 13, False), ("internal", 13, True), ("cancelled", 1, True),
    ("deadline-exceeded", 4, True), ("resource-exhausted", 8, True), ("5xx", 14, False), ("unavailable", 0, False),
])
def test_grpc_retry_conditions(retry_on: str, status: int, retried: bool) -> None:
    policy = RetryPolicy.from_spec({"attempts": 2, "retryOn": retry_on})
    assert policy.retriable(200, None, status) is retried


def test_a_refused_stream_is_retried_by_its_own_condition_and_by_reset() -> None:
    assert RetryPolicy.from_spec({"retryOn": "refused-stream"}).retriable(None, "refused-stream")
    assert RetryPolicy.from_spec({"retryOn": "reset"}).retriable(None, "refused-stream")
    assert not RetryPolicy.from_spec({"retryOn": "connect-failure"}).retriable(None, "refused-stream")


def test_an_abort_with_a_grpc_status_answers_as_grpc() -> None:
    response = abort_response({"grpcStatus": "RESOURCE_EXHAUSTED"})
    assert response.status == 200 and (b"grpc-status", b"8") in response.headers
    assert abort_response({"httpStatus": 418}).status == 418


def vs(rule: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": "echo"},
            "spec": {"hosts": ["echo"], "http": [{"route": [{"destination": {"host": "echo"}}], **rule}]}}


@pytest.mark.parametrize("rule", [
    {"fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}}},
    {"fault": {"abort": {"grpcStatus": 14}}},
    {"retries": {"attempts": 3, "retryOn": "unavailable,cancelled,deadline-exceeded,internal,resource-exhausted"}},
    {"retries": {"attempts": 3, "retryOn": "5xx,503,connect-failure,refused-stream"}},
])
def test_grpc_config_is_accepted(rule: dict[str, Any]) -> None:
    resource, problems = check_document(vs(rule), "f")
    assert resource is not None, problems


@pytest.mark.parametrize(("rule", "message"), [
    ({"fault": {"abort": {"grpcStatus": "NOPE"}}}, "is not a gRPC status"),
    ({"fault": {"abort": {"grpcStatus": 99}}}, "is not a gRPC status"),
    ({"fault": {"abort": {"grpcStatus": "UNAVAILABLE", "httpStatus": 503}}}, "give one of httpStatus or grpcStatus"),
    ({"fault": {"abort": {"percentage": {"value": 1}}}}, "give one of httpStatus or grpcStatus"),
    ({"retries": {"attempts": 3, "retryOn": "unavailable,retry-forever"}}, "'retry-forever' is not a retry condition"),
    ({"retries": {"attempts": 3, "retryOn": 5}}, "must be a comma-separated string"),
])
def test_grpc_config_that_would_do_nothing_is_refused_with_the_field_named(rule: dict[str, Any], message: str) -> None:
    resource, problems = check_document(vs(rule), "f")
    assert resource is None and any(message in p for p in problems), problems
