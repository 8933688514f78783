"""Reading what ``stepdown run`` wrote."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_output"]


def read_output(path: Path) -> dict[int, dict[str, object]]:
    """The output's records by input index; fails the test if an index was written twice."""
    records: dict[int, dict[str, object]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        assert record["index"] not in records, f"index {record['index']} written twice"
        records[record["index"]] = record
    return records
