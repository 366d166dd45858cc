"""Rows as plain dicts with stable keys: for `--json` output, exports and the UI."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from storage.models import Base


def row_as_dict(row: Base) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for column in row.__table__.columns:
        value = getattr(row, column.key)
        values[column.key] = value.isoformat() if isinstance(value, datetime) else value
    return values
