"""Job ids: unguessable, URL-safe, and never read as a command-line option."""

from __future__ import annotations

import re

from batch.store import new_job_id
from surgeserve_client.cli import build_parser


def test_job_ids_never_start_with_a_dash() -> None:
    """One token_urlsafe(16) in 64 starts with "-", and `ssc wait <id>` then failed with
    "unrecognized arguments" (CI met one). In 5,000 draws the old ids had ~78 such."""
    ids = [new_job_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert any("-" in i for i in ids)  # still the whole alphabet after the first character


def test_an_old_id_that_starts_with_a_dash_goes_after_the_double_dash() -> None:
    args = build_parser("ssc").parse_args(["wait", "--", "-u78HjTGZXExykYNuBrkKQ", "abc"])
    assert args.ids == ["-u78HjTGZXExykYNuBrkKQ", "abc"]
