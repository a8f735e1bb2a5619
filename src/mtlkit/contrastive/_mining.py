"""Positive-pair (and hard-negative) mining from labelled pair data, for :class:`SimCSELoss`.

The paper (section 4) mines positives from the paraphrase (QQP) and similarity (STS-B) data:
pairs labelled as paraphrases, or scored as very similar, become ``(anchor, positive)`` pairs.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Hashable, Iterable
from typing import Literal, NamedTuple

from mtlkit.contrastive._pairs import ContrastivePair
from mtlkit.contrastive._records import check_iterable, read_field, read_label, read_text

logger = logging.getLogger(__name__)

HardNegatives = Literal["none", "same_anchor", "pool"]
_HARD_NEGATIVES = ("none", "same_anchor", "pool")


def _check_mining_options(
    hard_negatives: object, threshold: float, negative_threshold: float | None,
    sentence_keys: object,
) -> None:
    if hard_negatives not in _HARD_NEGATIVES:
        raise ValueError(
            f"hard_negatives: expected one of {_HARD_NEGATIVES}, got {hard_negatives!r}"
        )
    if hard_negatives != "none" and negative_threshold is None:
        raise ValueError(
            f"negative_threshold: expected a number with hard_negatives={hard_negatives!r}, "
            "got None"
        )
    if negative_threshold is not None and negative_threshold >= threshold:
        raise ValueError(
            f"negative_threshold: expected a number below threshold ({threshold}), "
            f"got {negative_threshold}"
        )
    if not (isinstance(sentence_keys, tuple) and len(sentence_keys) == 2):
        raise ValueError(f"sentence_keys: expected a pair of field names, got {sentence_keys!r}")


class _LabelledPairs(NamedTuple):
    positives: list[tuple[str, str]]
    negatives_of: dict[str, list[str]]  # stripped sentence -> its non-paraphrases
    pool: list[str]  # every sentence of a non-paraphrase pair


def _read_records(
    records: Iterable[object], label_key: Hashable, sentence_keys: tuple[Hashable, Hashable],
    threshold: float, negative_threshold: float | None,
) -> _LabelledPairs:
    found = _LabelledPairs([], {}, [])
    skipped = 0
    for index, record in enumerate(records):
        label = read_label(read_field(record, label_key, index, "records"), index, label_key)
        first, second = (
            read_text(read_field(record, key, index, "records"), "records", index)
            for key in sentence_keys
        )
        if label is None or first is None or second is None:
            skipped += 1
            continue
        if label >= threshold:
            found.positives.append((first, second))
        elif negative_threshold is not None and label <= negative_threshold:
            found.negatives_of.setdefault(first.strip(), []).append(second)
            found.negatives_of.setdefault(second.strip(), []).append(first)
            found.pool.extend((first, second))
    if skipped:
        logger.warning("mine_pairs: skipped %d records with a missing label or sentence", skipped)
    return found


def _with_negative(
    anchor: str, positive: str, found: _LabelledPairs, use_pool: bool, rng: random.Random
) -> ContrastivePair | None:
    """The row with a hard negative that is neither its anchor nor its positive, or ``None``."""
    own = {anchor.strip(), positive.strip()}
    for first, second in ((anchor, positive), (positive, anchor)):
        candidates = [n for n in found.negatives_of.get(first.strip(), ()) if n.strip() not in own]
        if candidates:
            return ContrastivePair(first, second, rng.choice(candidates))
    if not use_pool:
        return None
    for _ in range(100):  # the pool is large: a few draws find a foreign sentence
        negative = rng.choice(found.pool)
        if negative.strip() not in own:
            return ContrastivePair(anchor, positive, negative)
    rest = [n for n in found.pool if n.strip() not in own]
    if not rest:
        logger.warning("mine_pairs: no pool negative differs from %r; left out", anchor)
        return None
    return ContrastivePair(anchor, positive, rng.choice(rest))


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
      ``seed``) from the non-paraphrase pairs. Every positive is kept.

    A hard negative never equals the row's own anchor or positive (compared without surrounding
    whitespace), even when the data holds a pair twice with contradicting labels or a pair
    ``(a, a)``; such candidates are passed over.

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
        TypeError: ``records`` is a bare string, or a sentence is not a string.
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
    check_iterable("records", records)
    _check_mining_options(hard_negatives, threshold, negative_threshold, sentence_keys)
    found = _read_records(records, label_key, sentence_keys, threshold, negative_threshold)
    if hard_negatives == "none":
        return [ContrastivePair(a, p) for a, p in found.positives]
    if hard_negatives == "pool" and not found.pool:
        raise ValueError(
            f"records: expected a pair with label <= negative_threshold ({negative_threshold}) "
            "for hard_negatives='pool', got none"
        )
    rng = random.Random(seed)
    rows = []
    for anchor, positive in found.positives:
        row = _with_negative(anchor, positive, found, hard_negatives == "pool", rng)
        if row is not None:
            rows.append(row)
    if len(rows) < len(found.positives):
        logger.info(
            "mine_pairs: %d of %d positive pairs have no hard negative and were left out",
            len(found.positives) - len(rows), len(found.positives),
        )
    return rows
