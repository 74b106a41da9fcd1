from common.textnorm import cache_key, normalise


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
