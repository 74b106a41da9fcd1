from common.corpus import LABELS, load_examples, snippets, split


def test_corpus_is_labelled_reviews_without_plots() -> None:
    examples = load_examples()
    assert len(examples) > 12_000
    assert {e.label for e in examples} == {0, 1}
    assert len({e.text for e in examples}) == len(examples)
    assert LABELS == ["NEGATIVE", "POSITIVE"]


def test_split_is_deterministic_and_disjoint() -> None:
    examples = load_examples()
    train, test = split(examples, test_fraction=0.2, seed=13)
    train2, test2 = split(list(reversed(examples)), test_fraction=0.2, seed=13)
    assert [e.text for e in test] == [e.text for e in test2]
    assert not {e.text for e in train} & {e.text for e in test}
    assert len(test) == int(len(examples) * 0.2)
    assert train2 == train


def test_snippets_are_distinct() -> None:
    texts = snippets(2000)
    assert len(texts) == len(set(texts)) == 2000
