"""Strict checks of JSON bodies against a protobuf descriptor, as Grafana's decoders see them.

`json_format.Parse(..., ignore_unknown_fields=False)` already rejects unknown fields and wrong
types, but it is lenient where protojson *output* is exact: it accepts 64-bit integers as JSON
numbers, original snake_case field names, and zero values. `violations()` reports those.
"""

from __future__ import annotations

import base64
import re

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor as FD

INT64_TYPES = {FD.TYPE_INT64, FD.TYPE_UINT64, FD.TYPE_SINT64, FD.TYPE_FIXED64, FD.TYPE_SFIXED64}
INT32_TYPES = {FD.TYPE_INT32, FD.TYPE_UINT32, FD.TYPE_SINT32, FD.TYPE_FIXED32, FD.TYPE_SFIXED32}
HEX_ID_FIELDS = {"traceId", "spanId", "parentSpanId"}
_HEX = re.compile(r"^[0-9a-f]*$")


def _is_map(f) -> bool:
    return f.type == FD.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def _scalar_violation(f, v, path: str, hex_ids: bool) -> str | None:
    t = f.type
    if t in INT64_TYPES:
        if not isinstance(v, str) or not re.fullmatch(r"-?\d+", v):
            return f"{path}: 64-bit integer must be a JSON string of digits, got {v!r}"
    elif t in INT32_TYPES:
        if isinstance(v, bool) or not isinstance(v, int):
            return f"{path}: 32-bit integer must be a JSON number, got {v!r}"
    elif t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        if isinstance(v, bool) or not (isinstance(v, (int, float)) or v in ("NaN", "Infinity", "-Infinity")):
            return f"{path}: double must be a JSON number, got {v!r}"
    elif t == FD.TYPE_BOOL:
        if not isinstance(v, bool):
            return f"{path}: bool must be true/false, got {v!r}"
    elif t == FD.TYPE_STRING:
        if not isinstance(v, str):
            return f"{path}: string expected, got {v!r}"
    elif t == FD.TYPE_BYTES:
        if not isinstance(v, str):
            return f"{path}: bytes must be a JSON string, got {v!r}"
        if hex_ids and f.json_name in HEX_ID_FIELDS:
            if not _HEX.match(v.lower()) or len(v) % 2:
                return f"{path}: OTLP/JSON ids are hex strings, got {v!r}"
        else:
            try:
                base64.b64decode(v, validate=True)
            except Exception:
                return f"{path}: bytes must be base64, got {v!r}"
    elif t == FD.TYPE_ENUM:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            return f"{path}: enum must be a name or an integer, got {v!r}"
    return None


def _is_zero(f, v) -> bool:
    if f.type in INT64_TYPES:
        return v in ("0", 0)
    if f.type in INT32_TYPES or f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return v == 0 and not isinstance(v, bool)
    if f.type == FD.TYPE_BOOL:
        return v is False
    if f.type in (FD.TYPE_STRING, FD.TYPE_BYTES):
        return v == ""
    if f.type == FD.TYPE_ENUM:
        return v == 0 or (isinstance(v, str) and f.enum_type.values_by_name.get(v) is not None
                          and f.enum_type.values_by_name[v].number == 0)
    return False


def violations(obj, descriptor, path: str = "$", *, hex_ids: bool = False, zero_values: bool = True) -> list[str]:
    """Everything in `obj` that protojson output for `descriptor` would not contain."""
    out: list[str] = []
    if not isinstance(obj, dict):
        return [f"{path}: expected a JSON object for {descriptor.full_name}, got {type(obj).__name__}"]
    by_json = {f.json_name: f for f in descriptor.fields}
    by_name = {f.name: f for f in descriptor.fields}
    for key, v in obj.items():
        p = f"{path}.{key}"
        f = by_json.get(key)
        if f is None:
            if key in by_name:
                out.append(f"{p}: field must be spelled {by_name[key].json_name!r} (lowerCamel)")
            else:
                out.append(f"{p}: unknown field of {descriptor.full_name}")
            continue
        if v is None:
            out.append(f"{p}: null emitted (omit the field instead)")
            continue
        if _is_map(f):
            if not isinstance(v, dict):
                out.append(f"{p}: map must be a JSON object")
                continue
            if zero_values and not v:
                out.append(f"{p}: empty map emitted")
            vf = f.message_type.fields_by_name["value"]
            for mk, mv in v.items():
                out.extend(_value(vf, mv, f"{p}[{mk!r}]", hex_ids, zero_values))
        elif f.is_repeated:
            if not isinstance(v, list):
                out.append(f"{p}: repeated field must be a JSON array")
                continue
            if zero_values and not v:
                out.append(f"{p}: empty array emitted")
            for i, x in enumerate(v):
                out.extend(_value(f, x, f"{p}[{i}]", hex_ids, zero_values))
        else:
            if zero_values and f.containing_oneof is None and f.type != FD.TYPE_MESSAGE and _is_zero(f, v):
                out.append(f"{p}: zero value emitted ({v!r}); protojson omits it")
            out.extend(_value(f, v, p, hex_ids, zero_values))
    return out


def _value(f, v, path, hex_ids, zero_values) -> list[str]:
    if f.type == FD.TYPE_MESSAGE:
        return violations(v, f.message_type, path, hex_ids=hex_ids, zero_values=zero_values)
    err = _scalar_violation(f, v, path, hex_ids)
    return [err] if err else []


def parse_strict(body, msg_cls, *, hex_ids: bool = False, zero_values: bool = True):
    """Parse JSON text into `msg_cls` rejecting unknown fields, and fail on any protojson violation."""
    import json

    text = body.decode() if isinstance(body, (bytes, bytearray)) else body
    obj = json.loads(text)
    problems = violations(obj, msg_cls.DESCRIPTOR, hex_ids=hex_ids, zero_values=zero_values)
    assert not problems, "response is not exact protojson:\n  " + "\n  ".join(problems[:30])
    if hex_ids:
        from .otlp import otlp_json_to_message

        return otlp_json_to_message(obj, msg_cls, strict=True)
    return json_format.Parse(text, msg_cls(), ignore_unknown_fields=False)
