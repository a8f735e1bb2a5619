"""Reading sentences and labels from plain records: mappings, objects or sequences."""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence


def read_field(record: object, key: Hashable, index: int, argument: str) -> object:
    try:
        if isinstance(record, Mapping):
            return record[key]
        if isinstance(key, int) and isinstance(record, Sequence) and not isinstance(record, str):
            return record[key]
        if isinstance(key, str):
            return getattr(record, key)
    except (KeyError, IndexError, AttributeError):
        pass
    raise ValueError(
        f"{argument}: expected a field {key!r} in record {index}, got {record!r:.120}"
    )


def check_iterable(argument: str, value: object) -> None:
    """A bare string is iterable, but it is one sentence, not many: refuse it."""
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{argument}: expected an iterable of sentences or records, got a bare "
            f"{type(value).__name__} {value!r:.80} (wrap one sentence in a list)"
        )
    if not isinstance(value, Iterable):
        raise TypeError(f"{argument}: expected an iterable, got {type(value).__name__}")


def read_text(value: object, argument: str, index: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(
            f"{argument}: expected str sentences, got {type(value).__name__} {value!r:.80} "
            f"in record {index}"
        )
    return value if value.strip() else None


def read_label(value: object, index: int, key: Hashable) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"records: expected a number as label {key!r} of record {index}, got {value!r}"
        ) from err
    return None if math.isnan(number) else number
