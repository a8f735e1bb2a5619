"""The rows of contrastive training: :class:`ContrastivePair`, unsupervised pairs, group ids.

Records are plain rows: mappings (``csv.DictReader`` rows, dicts), objects with attributes
(dataclasses, named tuples) or sequences indexed by position.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple

from mtlkit.contrastive._records import check_iterable, read_field, read_text

logger = logging.getLogger(__name__)


class ContrastivePair(NamedTuple):
    """One training row for :class:`~mtlkit.SimCSELoss`: encode the fields as ``z1, z2, z3``.

    Example:
        >>> from mtlkit import ContrastivePair
        >>> ContrastivePair("a cat sat", "a cat was sitting")
        ContrastivePair(anchor='a cat sat', positive='a cat was sitting', negative=None)
    """

    anchor: str
    """The anchor sentence (``z1``)."""
    positive: str
    """Its positive (``z2``): a paraphrase, or the anchor itself for unsupervised SimCSE."""
    negative: str | None = None
    """An optional hard negative (``z3``)."""


def unsupervised_pairs(
    sentences: Iterable[object], *, key: Hashable | None = None
) -> list[ContrastivePair]:
    """Unsupervised SimCSE pairs ``(x, x)``: the two views differ only by the encoder's dropout.

    Args:
        sentences: Strings, or records holding a sentence under ``key``.
        key: The field to read from each record; ``None`` when ``sentences`` are strings.

    Returns:
        One pair per non-empty sentence, in order. Empty sentences are skipped with a warning.

    Raises:
        TypeError: ``sentences`` is a bare string (``unsupervised_pairs("a cat")`` would
            otherwise pair single characters), or a sentence is not a string.

    Example:
        >>> from mtlkit import unsupervised_pairs
        >>> unsupervised_pairs(["a dog", "a cat"])[1]
        ContrastivePair(anchor='a cat', positive='a cat', negative=None)
        >>> len(unsupervised_pairs([{"sentence": "hi"}], key="sentence"))
        1
    """
    check_iterable("sentences", sentences)
    pairs, empty = [], 0
    for index, item in enumerate(sentences):
        text = read_text(item if key is None else read_field(item, key, index, "sentences"),
                     "sentences", index)
        if text is None:
            empty += 1
            continue
        pairs.append(ContrastivePair(text, text))
    if empty:
        logger.warning("unsupervised_pairs: skipped %d empty sentences", empty)
    return pairs


def group_ids(pairs: Iterable[ContrastivePair | Sequence[str]]) -> list[int]:
    """Ids for :class:`~mtlkit.SimCSELoss`'s ``ids``: rows that share a sentence share an id.

    Rows are grouped transitively over their anchor and positive texts (whitespace-stripped), so
    a duplicate sentence, or a paraphrase of a paraphrase, is never used as an in-batch negative.
    Negatives do not link rows. Ids are numbered by first appearance.

    Example:
        >>> from mtlkit import group_ids
        >>> group_ids([("a", "b"), ("c", "d"), ("b", "e"), ("a", "a")])
        [0, 1, 0, 0]
    """
    parent: dict[str, str] = {}

    def find(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    rows = []
    for index, pair in enumerate(pairs):
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) < 2:
            raise TypeError(
                f"pairs: expected (anchor, positive, ...) rows, got pairs[{index}] = {pair!r:.80}"
            )
        anchor, positive = str(pair[0]).strip(), str(pair[1]).strip()
        parent[find(positive)] = find(anchor)
        rows.append(anchor)
    numbering: dict[str, int] = {}
    return [numbering.setdefault(find(anchor), len(numbering)) for anchor in rows]
