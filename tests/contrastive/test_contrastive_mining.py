"""Pair mining for SimCSE: mine_pairs, unsupervised_pairs, group_ids."""

from __future__ import annotations

import logging
from collections import namedtuple
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlkit import ContrastivePair, group_ids, mine_pairs, unsupervised_pairs
from real_parts import read_tsv

STS = [
    {"sentence1": "a man plays guitar", "sentence2": "a man plays a guitar", "similarity": "4.8"},
    {"sentence1": "a man plays guitar", "sentence2": "a woman cuts onions", "similarity": "0.2"},
    {"sentence1": "kids run", "sentence2": "children are running", "similarity": "4.0"},
    {"sentence1": "kids run", "sentence2": "kids walk", "similarity": "2.5"},
    {"sentence1": "a dog barks", "sentence2": "a cat sleeps", "similarity": "0.6"},
    {"sentence1": "the sun rises", "sentence2": "sunrise", "similarity": "3.99"},
]


def test_similarity_threshold_default_is_4():
    pairs = mine_pairs(STS)
    assert pairs == [
        ContrastivePair("a man plays guitar", "a man plays a guitar"),
        ContrastivePair("kids run", "children are running"),
    ]
    assert [p.anchor for p in mine_pairs(STS, threshold=2.5)] == [
        "a man plays guitar", "kids run", "kids run", "the sun rises",
    ]


def test_same_anchor_negatives_and_left_out_positives(caplog):
    with caplog.at_level(logging.INFO, logger="mtlkit"):
        rows = mine_pairs(STS, negative_threshold=1.0, hard_negatives="same_anchor")
    assert rows == [
        ContrastivePair("a man plays guitar", "a man plays a guitar", "a woman cuts onions")
    ]
    assert "1 of 2 positive pairs have no hard negative" in caplog.text


def test_same_anchor_uses_the_positive_side_and_swaps():
    records = [
        ("q1", "q2", 1), ("q3", "q2", 0),  # q2's non-paraphrase: the row becomes (q2, q1, q3)
    ]
    rows = mine_pairs(records, label_key=2, sentence_keys=(0, 1), threshold=1,
                      negative_threshold=0, hard_negatives="same_anchor")
    assert rows == [ContrastivePair("q2", "q1", "q3")]


def test_pool_keeps_every_positive_and_never_picks_its_own_sentences():
    rows = mine_pairs(STS, negative_threshold=1.0, hard_negatives="pool", seed=3)
    positives = [(p.anchor, p.positive) for p in mine_pairs(STS)]
    assert [(r.anchor, r.positive) for r in rows] == positives
    pool = {"a man plays guitar", "a woman cuts onions", "a dog barks", "a cat sleeps"}
    for row in rows:
        assert row.negative in pool
        assert row.negative not in (row.anchor, row.positive)
    assert rows[0].negative == "a woman cuts onions"  # same-anchor negative preferred
    assert rows == mine_pairs(STS, negative_threshold=1.0, hard_negatives="pool", seed=3)


def test_quora_style_labels_and_record_types():
    Row = namedtuple("Row", "sentence1 sentence2 is_duplicate")

    @dataclass
    class Rec:
        sentence1: str
        sentence2: str
        is_duplicate: float

    for make in (Row, Rec, lambda *a: dict(zip(Row._fields, a, strict=True))):
        records = [make("a?", "b?", 1.0), make("c?", "d?", 0.0), make("a?", "e?", 0)]
        assert mine_pairs(records, label_key="is_duplicate", threshold=1, negative_threshold=0,
                          hard_negatives="same_anchor") == [ContrastivePair("a?", "b?", "e?")]


def test_missing_labels_and_empty_sentences_are_skipped_with_a_warning(caplog):
    records = [
        *STS,
        {"sentence1": "x", "sentence2": "y", "similarity": ""},
        {"sentence1": "x", "sentence2": "y", "similarity": None},
        {"sentence1": " ", "sentence2": "y", "similarity": "5"},
        {"sentence1": "x", "sentence2": "y", "similarity": float("nan")},
    ]
    with caplog.at_level(logging.WARNING, logger="mtlkit"):
        assert mine_pairs(records) == mine_pairs(STS)
    assert "skipped 4 records" in caplog.text


def test_mining_bad_input():
    with pytest.raises(ValueError, match="hard_negatives: expected one of"):
        mine_pairs(STS, hard_negatives="random")
    with pytest.raises(ValueError, match="negative_threshold: expected a number with hard_neg"):
        mine_pairs(STS, hard_negatives="same_anchor")
    below = r"negative_threshold: expected a number below threshold \(4.0\), got 4.0"
    with pytest.raises(ValueError, match=below):
        mine_pairs(STS, negative_threshold=4.0)
    with pytest.raises(ValueError, match="records: expected a field 'score' in record 0"):
        mine_pairs(STS, label_key="score")
    with pytest.raises(ValueError, match="records: expected a number as label 'similarity' of "):
        mine_pairs([{"sentence1": "a", "sentence2": "b", "similarity": "high"}])
    with pytest.raises(TypeError, match="records: expected str sentences"):
        mine_pairs([{"sentence1": 3, "sentence2": "b", "similarity": 5}])
    with pytest.raises(ValueError, match="records: expected a pair with label <= negative_thr"):
        mine_pairs(STS[:1], negative_threshold=0.0, hard_negatives="pool")
    with pytest.raises(ValueError, match="sentence_keys: expected a pair"):
        mine_pairs(STS, sentence_keys=("sentence1",))


def test_unsupervised_pairs(caplog):
    assert unsupervised_pairs(["a", "b"]) == [ContrastivePair("a", "a"), ContrastivePair("b", "b")]
    records = [{"sentence": " x"}, {"sentence": ""}, {"sentence": "y"}]
    with caplog.at_level(logging.WARNING, logger="mtlkit"):
        pairs = unsupervised_pairs(records, key="sentence")
    assert pairs == [ContrastivePair(" x", " x"), ContrastivePair("y", "y")]
    assert "skipped 1 empty" in caplog.text
    with pytest.raises(ValueError, match="sentences: expected a field 'text' in record 0"):
        unsupervised_pairs(records, key="text")
    with pytest.raises(TypeError, match="sentences: expected str sentences, got int 1"):
        unsupervised_pairs([1, 2])


@pytest.mark.parametrize("bare", ["a cat", b"a cat"])
def test_a_bare_string_is_refused_not_split_into_characters(bare):
    with pytest.raises(TypeError, match="sentences: expected an iterable of sentences or "
                                        "records, got a bare"):
        unsupervised_pairs(bare)
    with pytest.raises(TypeError, match="records: expected an iterable of sentences or "
                                        "records, got a bare"):
        mine_pairs(bare)
    with pytest.raises(TypeError, match="sentences: expected an iterable, got int"):
        unsupervised_pairs(3)


def _own_texts(row: ContrastivePair) -> set[str]:
    return {row.anchor.strip(), row.positive.strip()}


@pytest.mark.parametrize("mode", ["same_anchor", "pool"])
def test_a_hard_negative_is_never_the_rows_own_positive_or_anchor(mode):
    records = [
        # the same pair twice with contradicting labels: p is a "non-paraphrase" of a
        {"sentence1": "a", "sentence2": "p", "similarity": "5"},
        {"sentence1": "a", "sentence2": " p", "similarity": "0"},
        # a row (s, s): s is its own "non-paraphrase"
        {"sentence1": "s", "sentence2": "t", "similarity": "5"},
        {"sentence1": "s", "sentence2": "s", "similarity": "0"},
        {"sentence1": "x", "sentence2": "y", "similarity": "0"},
    ]
    for seed in range(20):
        rows = mine_pairs(records, negative_threshold=1.0, hard_negatives=mode, seed=seed)
        for row in rows:
            assert row.negative is not None and row.negative.strip() not in _own_texts(row), row
        if mode == "pool":  # every positive kept, with a foreign negative
            assert [(r.anchor, r.positive) for r in rows] == [("a", "p"), ("s", "t")]
        else:  # no same-anchor negative other than their own sentences: left out
            assert rows == []


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(
        st.tuples(st.sampled_from("abcde"), st.sampled_from("abcde"), st.sampled_from([0, 5])),
        max_size=12,
    ),
    mode=st.sampled_from(["same_anchor", "pool"]),
    seed=st.integers(0, 3),
)
def test_hard_negatives_property_on_random_records(records, mode, seed):
    if mode == "pool" and not any(label == 0 for *_, label in records):
        return  # "pool" needs a non-paraphrase pair (an error, tested above)
    rows = mine_pairs(records, label_key=2, sentence_keys=(0, 1), negative_threshold=1.0,
                      hard_negatives=mode, seed=seed)
    negatives_of: dict[str, set[str]] = {}
    for first, second, label in records:
        if label == 0:
            negatives_of.setdefault(first, set()).add(second)
            negatives_of.setdefault(second, set()).add(first)
    for row in rows:
        assert row.negative not in _own_texts(row), row
        if mode == "same_anchor":  # labelled a non-paraphrase of the row's anchor
            assert row.negative in negatives_of[row.anchor], row


def _components_by_brute_force(pairs: list[tuple[str, str]]) -> list[int]:
    """Rows i and j are linked when they share a sentence; close transitively by iteration."""
    n = len(pairs)
    linked = [[bool({*pairs[i]} & {*pairs[j]}) for j in range(n)] for i in range(n)]
    for k in range(n):
        for i in range(n):
            for j in range(n):
                linked[i][j] = linked[i][j] or (linked[i][k] and linked[k][j])
    ids: list[int] = []
    for i in range(n):
        first = next(j for j in range(n) if linked[i][j] or j == i)
        ids.append(first)
    return ids


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.sampled_from("abcdefgh")), max_size=12))
def test_group_ids_are_connected_components(pairs):
    got = group_ids(pairs)
    reference = _components_by_brute_force(pairs)
    for i in range(len(pairs)):
        for j in range(len(pairs)):
            assert (got[i] == got[j]) == (reference[i] == reference[j])
    # numbered by first appearance
    seen: list[int] = []
    for value in got:
        if value not in seen:
            assert value == len(seen)
            seen.append(value)


def test_group_ids_ignore_negatives_and_reject_bad_rows():
    assert group_ids([ContrastivePair("a", "b", "c"), ContrastivePair("c", "d", "a")]) == [0, 1]
    with pytest.raises(TypeError, match=r"pairs\[1\]"):
        group_ids([("a", "b"), "ab"])


def test_real_sts_and_quora():
    sts = read_tsv("sts-train.csv")
    positives = mine_pairs(sts)
    assert len(positives) == sum(float(r["similarity"]) >= 4.0 for r in sts)
    quora = read_tsv("quora-train-partial.csv")
    kwargs = {"label_key": "is_duplicate", "threshold": 1, "negative_threshold": 0}
    pairs = mine_pairs(quora, **kwargs)
    assert len(pairs) == sum(r["is_duplicate"] == "1.0" for r in quora)
    triplets = mine_pairs(quora, hard_negatives="same_anchor", **kwargs)
    assert 0 < len(triplets) < len(pairs)
    assert len(mine_pairs(quora, hard_negatives="pool", **kwargs)) == len(pairs)
    ids = group_ids(pairs)
    assert len(ids) == len(pairs) and max(ids) < len(pairs)
