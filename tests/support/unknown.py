"""Fail when a decoded protobuf message carries fields our (Grafana's) schema does not know."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.unknown_fields import UnknownFieldSet


def unknown_field_paths(msg, path: str = "$") -> list[str]:
    out = []
    unk = UnknownFieldSet(msg)
    if len(unk):
        out.append(f"{path}: unknown field numbers {sorted({f.field_number for f in unk})}")
    for f, v in msg.ListFields():
        if f.type != FD.TYPE_MESSAGE:
            continue
        if f.message_type.GetOptions().map_entry:
            for k in v:
                if hasattr(v[k], "ListFields"):
                    out.extend(unknown_field_paths(v[k], f"{path}.{f.name}[{k!r}]"))
        elif f.is_repeated:
            for i, x in enumerate(v):
                out.extend(unknown_field_paths(x, f"{path}.{f.name}[{i}]"))
        else:
            out.extend(unknown_field_paths(v, f"{path}.{f.name}"))
    return out


def assert_no_unknown_fields(msg) -> None:
    paths = unknown_field_paths(msg)
    assert not paths, "protobuf response has fields the schema does not declare:\n  " + "\n  ".join(paths[:20])
