"""What a step returned or raised becomes the /complete or /fail body."""

from __future__ import annotations

import json
import math

from worker_sdk import NonRetryableError, RetryAfter, calls
from worker_sdk.outcome import MAX_ERROR_MESSAGE_BYTES, from_exception, from_result, truncate_utf8


def test_result_becomes_complete_body() -> None:
    out = from_result({"a": [1, "é"]})
    assert out.kind == "complete"
    assert json.loads(out.with_lease("tok")) == {"lease_token": "tok", "output": {"a": [1, "é"]}}
    assert from_result(None).with_lease("t") == b'{"lease_token":"t","output":null}'


def test_non_json_output_fails_for_good() -> None:
    for bad in ({1, 2}, object(), math.nan, {"x": math.inf}, "nul\x00char"):
        out = from_result(bad)
        assert out.kind == "fail"
        assert out.retryable is False
        assert out.body["error"]["type"] == "OutputNotSerializable"


def test_non_retryable_error() -> None:
    out = from_exception(NonRetryableError("card declined"))
    assert out.kind == "fail"
    assert out.body == {
        "error": {"type": "NonRetryableError", "message": "card declined"},
        "retryable": False,
    }
    typed = from_exception(NonRetryableError("x", error_type="CardDeclined"))
    assert typed.body["error"]["type"] == "CardDeclined"


def test_subclass_of_non_retryable_keeps_its_name() -> None:
    class Declined(NonRetryableError):
        pass

    out = from_exception(Declined("no"))
    assert out.body["error"] == {"type": "Declined", "message": "no"}
    assert out.retryable is False


def test_retry_after() -> None:
    out = from_exception(RetryAfter(12.5, "rate limited upstream"))
    assert out.body == {
        "error": {"type": "RetryAfter", "message": "rate limited upstream"},
        "retryable": True,
        "retry_after_s": 12.5,
    }
    assert from_exception(RetryAfter(3)).body["error"]["message"] == "retry after 3s"


def test_other_exception_is_retryable_with_class_name() -> None:
    out = from_exception(KeyError("k"))
    assert out.body == {"error": {"type": "KeyError", "message": "'k'"}, "retryable": True}
    assert from_exception(RuntimeError()).body["error"]["message"] == "RuntimeError"


def test_long_message_is_truncated_to_8_kib() -> None:
    out = from_exception(ValueError("é" * 10_000))
    message = out.body["error"]["message"]
    assert len(message.encode()) <= MAX_ERROR_MESSAGE_BYTES
    assert message.endswith("[truncated]")
    assert truncate_utf8("short") == "short"
    assert truncate_utf8("\ud800x") == "?x"  # lone surrogates cannot go to the server


def test_report_call_paths() -> None:
    ok = calls.report("sr/1", "tok", from_result(1))
    assert (ok.method, ok.path) == ("POST", "/api/v1/step-runs/sr%2F1/complete")
    failed = calls.report("sr1", "tok", from_exception(RetryAfter(1)))
    assert failed.path == "/api/v1/step-runs/sr1/fail"
    assert failed.body is not None and json.loads(failed.body)["lease_token"] == "tok"


def test_a_failure_is_always_one_the_server_takes() -> None:
    """NUL in an error, or a retry delay beyond the server's bounds, was refused (422) and the
    step left to its lease's expiry."""
    out = from_exception(ValueError("bad\x00byte"))
    assert out.body["error"]["message"] == "bad\ufffdbyte"
    typed = from_exception(NonRetryableError("x", error_type="Nul\x00Type"))
    assert typed.body["error"]["type"] == "Nul\ufffdType"
    assert from_exception(RetryAfter(10**9)).body["retry_after_s"] == 86_400
    assert from_exception(RetryAfter(math.inf)).body["retry_after_s"] == 86_400
    for bad in (math.nan, -1):
        try:
            RetryAfter(bad)
        except ValueError:
            continue
        raise AssertionError(f"RetryAfter({bad}) accepted")
