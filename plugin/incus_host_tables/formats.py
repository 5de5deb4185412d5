"""Machine-readable output of the commands that print a list:
``--format json|yaml|csv`` (``table``, the human form, is each command's own)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any


class Format(Enum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"
    CSV = "csv"


FORMAT_NAMES = tuple(f.value for f in Format)


def render(records: Sequence[Mapping[str, Any]], fmt: Format, fields: Sequence[str]) -> str:
    """``records`` as JSON or YAML (nested values kept), or CSV (a header of
    ``fields``, lists joined by ``,``). Ends with a newline."""
    # Imported here: `device` and the hooks build the parser, never print these.
    import csv
    import io
    import json

    if fmt is Format.JSON:
        return json.dumps(list(records), indent=2) + "\n"
    if fmt is Format.YAML:
        import yaml

        return str(yaml.safe_dump(list(records), sort_keys=False, default_flow_style=False))
    if fmt is Format.CSV:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(fields), lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({f: _cell(record.get(f)) for f in fields})
        return out.getvalue()
    raise ValueError(f"{fmt} is each command's own")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)
