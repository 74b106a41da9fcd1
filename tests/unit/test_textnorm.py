import pytest

from common.errors import EmptyText, InvalidInput, TextTooLong, TooManyItems
from common.textnorm import cache_key, check_texts, normalise


def test_nfc_whitespace_and_trim() -> None:
    decomposed = "Cafe\u0301  \t is\n\ngreat  "
    assert normalise(decomposed, lowercase=False) == "Café is great"


def test_lowercase_only_for_uncased_models() -> None:
    assert normalise("Great FILM", lowercase=True) == "great film"
    assert normalise("Great FILM", lowercase=False) == "Great FILM"


def test_whitespace_only_normalises_to_empty() -> None:
    assert normalise(" \u00a0\t\n ", lowercase=True) == ""


def test_key_names_model_version_and_hides_text() -> None:
    key = cache_key("m", "v1", "secret review")
    assert key.startswith("surge:pred:m:v1:")
    assert "secret" not in key
    assert key == cache_key("m", "v1", "secret review")
    assert key != cache_key("m", "v2", "secret review")
    assert key != cache_key("n", "v1", "secret review")
    assert key != cache_key("m", "v1", "secret review!")


def test_one_list_check_for_predictions_and_jobs() -> None:
    """Online bulk predictions and jobs validate with the same function, so their errors
    carry the same details (the jobs' TextTooLong once lacked `got`)."""
    with pytest.raises(TextTooLong) as too_long:
        check_texts(["ok", "x" * 11], max_chars=10, max_items=5, unit="job")
    assert too_long.value.detail == {"index": 1, "max_chars": 10, "got": 11}
    with pytest.raises(TooManyItems) as too_many:
        check_texts(["a"] * 3, max_chars=10, max_items=2)
    assert too_many.value.message == "at most 2 texts per request"
    assert too_many.value.detail == {"max_items": 2, "got": 3}
    with pytest.raises(InvalidInput, match="a job needs at least one text"):
        check_texts([], max_chars=10, max_items=2, unit="job")
    with pytest.raises(EmptyText) as empty:  # one text (not a list): no index
        check_texts([" "], max_chars=10, indexed=False)
    assert empty.value.detail is None
