"""Positive-pair (and hard-negative) mining from labelled pair data, for :class:`SimCSELoss`.

The paper (section 4) mines positives from the paraphrase (QQP) and similarity (STS-B) data:
pairs labelled as paraphrases, or scored as very similar, become ``(anchor, positive)`` pairs.
Records are plain rows: mappings (``csv.DictReader`` rows, dicts), objects with attributes
(dataclasses, named tuples) or sequences indexed by position.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Literal, NamedTuple

logger = logging.getLogger(__name__)

HardNegatives = Literal["none", "same_anchor", "pool"]
_HARD_NEGATIVES = ("none", "same_anchor", "pool")


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


def _field(record: object, key: Hashable, index: int) -> object:
    try:
        if isinstance(record, Mapping):
            return record[key]
        if isinstance(key, int) and isinstance(record, Sequence) and not isinstance(record, str):
            return record[key]
        if isinstance(key, str):
            return getattr(record, key)
    except (KeyError, IndexError, AttributeError):
        pass
    raise ValueError(f"record {index} has no field {key!r}: {record!r:.120}")


def _text(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"sentences must be str, got {type(value).__name__}: {value!r:.80}")
    return value if value.strip() else None


def _label(value: object, index: int, key: Hashable) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise ValueError(f"record {index}: label {key!r} is not a number: {value!r}") from err
    return None if math.isnan(number) else number


def unsupervised_pairs(
    sentences: Iterable[object], *, key: Hashable | None = None
) -> list[ContrastivePair]:
    """Unsupervised SimCSE pairs ``(x, x)``: the two views differ only by the encoder's dropout.

    Args:
        sentences: Strings, or records holding a sentence under ``key``.
        key: The field to read from each record; ``None`` when ``sentences`` are strings.

    Returns:
        One pair per non-empty sentence, in order. Empty sentences are skipped with a warning.

    Example:
        >>> from mtlkit import unsupervised_pairs
        >>> unsupervised_pairs(["a dog", "a cat"])[1]
        ContrastivePair(anchor='a cat', positive='a cat', negative=None)
        >>> len(unsupervised_pairs([{"sentence": "hi"}], key="sentence"))
        1
    """
    pairs, empty = [], 0
    for index, item in enumerate(sentences):
        text = _text(item if key is None else _field(item, key, index))
        if text is None:
            empty += 1
            continue
        pairs.append(ContrastivePair(text, text))
    if empty:
        logger.warning("unsupervised_pairs: skipped %d empty sentences", empty)
    return pairs


def mine_pairs(
    records: Iterable[object],
    *,
    label_key: Hashable = "similarity",
    threshold: float = 4.0,
    negative_threshold: float | None = None,
    hard_negatives: HardNegatives = "none",
    sentence_keys: tuple[Hashable, Hashable] = ("sentence1", "sentence2"),
    seed: int = 0,
) -> list[ContrastivePair]:
    """Mine ``(anchor, positive[, negative])`` rows from labelled sentence pairs.

    A record whose label is ``>= threshold`` gives the positive pair ``(sentence1, sentence2)``;
    one whose label is ``<= negative_threshold`` is a non-paraphrase, whose sentences are hard
    negatives of each other. Defaults fit STS-B (similarity 0-5, positives from 4.0); for Quora
    use ``label_key="is_duplicate", threshold=1, negative_threshold=0``.

    Hard negatives (``z3``) for a positive pair ``(a, p)``:

    - ``"none"``: no negatives; every positive pair is returned.
    - ``"same_anchor"``: a sentence labelled as a non-paraphrase of ``a`` (or of ``p``, and then
      the row is ``(p, a, n)``), as SimCSE's NLI triplets. Positives without one are left out
      (their number is logged at INFO): few sentences recur in QQP and STS-B.
    - ``"pool"``: the same-anchor negative when there is one, else a sentence drawn (with
      ``seed``) from the non-paraphrase pairs, never ``a`` or ``p`` itself. Every positive is kept.

    Records with a missing label (``None``, ``""``, NaN) or an empty sentence are skipped, and
    their number is logged as a warning (QQP has two rows without a label).

    Args:
        records: Rows with two sentences and a label (mappings, objects or sequences).
        label_key: The label's field.
        threshold: Positive when ``label >= threshold``.
        negative_threshold: Non-paraphrase when ``label <= negative_threshold``; ``None``: no
            negatives (needed by ``hard_negatives`` other than ``"none"``).
        hard_negatives: ``"none"``, ``"same_anchor"`` or ``"pool"`` (see above).
        sentence_keys: The fields of the two sentences.
        seed: Seeds the choice among several candidate negatives.

    Returns:
        The mined rows, in record order.

    Raises:
        ValueError: Unknown ``hard_negatives``, thresholds out of order, a missing field, a
            non-numeric label, or ``"pool"`` with no non-paraphrase pairs.

    Example:
        >>> from mtlkit import mine_pairs
        >>> rows = [
        ...     {"sentence1": "cook rice?", "sentence2": "how to cook rice", "is_duplicate": "1"},
        ...     {"sentence1": "cook rice?", "sentence2": "grow rice?", "is_duplicate": "0"},
        ...     {"sentence1": "a", "sentence2": "b", "is_duplicate": ""},  # no label: skipped
        ... ]
        >>> mine_pairs(rows, label_key="is_duplicate", threshold=1, negative_threshold=0,
        ...            hard_negatives="same_anchor")
        [ContrastivePair(anchor='cook rice?', positive='how to cook rice', negative='grow rice?')]
    """
    if hard_negatives not in _HARD_NEGATIVES:
        raise ValueError(f"hard_negatives must be one of {_HARD_NEGATIVES}, got {hard_negatives!r}")
    if hard_negatives != "none" and negative_threshold is None:
        raise ValueError(f"hard_negatives={hard_negatives!r} needs a negative_threshold")
    if negative_threshold is not None and negative_threshold >= threshold:
        raise ValueError(
            f"negative_threshold ({negative_threshold}) must be below threshold ({threshold})"
        )
    if not (isinstance(sentence_keys, tuple) and len(sentence_keys) == 2):
        raise ValueError(f"sentence_keys must be a pair of field names, got {sentence_keys!r}")

    positives: list[tuple[str, str]] = []
    negatives_of: dict[str, list[str]] = {}
    pool: list[str] = []
    skipped = 0
    for index, record in enumerate(records):
        label = _label(_field(record, label_key, index), index, label_key)
        first = _text(_field(record, sentence_keys[0], index))
        second = _text(_field(record, sentence_keys[1], index))
        if label is None or first is None or second is None:
            skipped += 1
            continue
        if label >= threshold:
            positives.append((first, second))
        elif negative_threshold is not None and label <= negative_threshold:
            negatives_of.setdefault(first.strip(), []).append(second)
            negatives_of.setdefault(second.strip(), []).append(first)
            pool.extend((first, second))
    if skipped:
        logger.warning("mine_pairs: skipped %d records with a missing label or sentence", skipped)
    if hard_negatives == "none":
        return [ContrastivePair(a, p) for a, p in positives]
    if hard_negatives == "pool" and not pool:
        raise ValueError("hard_negatives='pool' found no pair with label <= negative_threshold")

    rng = random.Random(seed)
    rows: list[ContrastivePair] = []
    for anchor, positive in positives:
        if anchor.strip() in negatives_of:
            rows.append(ContrastivePair(anchor, positive, rng.choice(negatives_of[anchor.strip()])))
        elif positive.strip() in negatives_of:
            rows.append(
                ContrastivePair(positive, anchor, rng.choice(negatives_of[positive.strip()]))
            )
        elif hard_negatives == "pool":
            own = {anchor.strip(), positive.strip()}
            for _ in range(100):
                negative = rng.choice(pool)
                if negative.strip() not in own:
                    rows.append(ContrastivePair(anchor, positive, negative))
                    break
            else:
                logger.warning("mine_pairs: no pool negative differs from %r; left out", anchor)
    if len(rows) < len(positives):
        logger.info(
            "mine_pairs: %d of %d positive pairs have no hard negative and were left out",
            len(positives) - len(rows), len(positives),
        )
    return rows


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
            raise TypeError(f"pairs[{index}] must be an (anchor, positive, ...) row: {pair!r:.80}")
        anchor, positive = str(pair[0]).strip(), str(pair[1]).strip()
        parent[find(positive)] = find(anchor)
        rows.append(anchor)
    numbering: dict[str, int] = {}
    return [numbering.setdefault(find(anchor), len(numbering)) for anchor in rows]
