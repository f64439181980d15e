"""Typed parameter lists: wire form and libvirt's validation errors."""

from __future__ import annotations

import pytest

from protocol import typed
from protocol.errors import ErrorCode, VirError
from protocol.programs import remote


def test_encode_makes_wire_params() -> None:
    m = remote().module
    params = typed.encode([("a", typed.ULLONG, 5), ("b", typed.BOOLEAN, True)])
    assert params == [m.remote_typed_param("a", (typed.ULLONG, 5)),
                      m.remote_typed_param("b", (typed.BOOLEAN, 1))]
    m.remote_typed_param_codec.encode(params[1])


def test_truncate_counts_or_cuts() -> None:
    params = typed.encode([("a", typed.INT, 1), ("b", typed.INT, 2)])
    assert typed.truncate(params, 0) == ([], 2)
    assert typed.truncate(params, 1) == (params[:1], 1)
    assert typed.truncate(params, 5) == (params, 2)


def test_validate_values_and_errors() -> None:
    allowed = {"b": typed.ULLONG, "m": typed.STRING | typed.MULTIPLE}
    ok = typed.encode([("b", typed.ULLONG, 1), ("m", typed.STRING, "x"), ("m", typed.STRING, "y")])
    assert typed.validate(ok, allowed) == {"b": 1, "m": ["x", "y"]}
    with pytest.raises(VirError) as e:
        typed.validate(typed.encode([("b", typed.INT, 1)]), allowed)
    assert e.value.code == ErrorCode.INVALID_ARG
    assert e.value.message == (
        "invalid argument: invalid type 'int' for parameter 'b', expected 'ullong'"
    )
    with pytest.raises(VirError) as e:
        typed.validate(typed.encode([("b", typed.ULLONG, 1), ("b", typed.ULLONG, 2)]), allowed)
    assert e.value.message == "invalid argument: parameter 'b' occurs multiple times"
    with pytest.raises(VirError) as e:
        typed.validate(typed.encode([("zz", typed.INT, 1), ("a", typed.INT, 1)]), allowed)
    assert e.value.code == ErrorCode.ARGUMENT_UNSUPPORTED
    assert e.value.message == "argument unsupported: parameter 'a' not supported"
