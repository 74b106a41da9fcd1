"""The playground page in headless Chromium (Debian's), against the real app: a prediction
appears after typing, a file becomes a job whose results download; a screenshot of each step
is kept in test-artifacts/."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.cdp import Browser, chromium
from tests.integration.test_jobs import jobs_redis, start_worker

__all__ = ["jobs_redis", "start_worker"]

ARTIFACTS = Path(os.environ.get("SURGE_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    binary = chromium()
    if binary is None:
        pytest.skip("chromium not installed (make install adds Debian's where apt-get works)")
    page = Browser(binary, tmp_path / "profile")
    yield page
    page.close()


@pytest.fixture
def site(make_app, live_server, jobs_redis, start_worker) -> Iterator[str]:  # type: ignore[no-untyped-def]
    start_worker()
    with live_server(make_app(redis_url=jobs_redis.url, job_chunk_size=4)) as srv:
        yield srv.url


def test_prediction_appears_after_typing(browser: Browser, site: str) -> None:
    browser.goto(site + "/")
    assert browser.wait_for("document.querySelectorAll('#model option').length") == 1
    browser.type_into("#text", "a warm, funny and moving film")
    # The bars of the whole text (a pause between keystrokes may show a part's first).
    rows = browser.wait_for("document.getElementById('bars').dataset.text === "
                            "'a warm, funny and moving film' && "
                            "Array.from(document.querySelectorAll('#bars .row'))"
                            ".map(r => [r.dataset.label, r.lastChild.textContent])")
    assert [label for label, _ in rows] == ["POSITIVE", "NEGATIVE"]
    assert float(rows[0][1].rstrip("%")) > 50
    width = browser.eval("document.querySelector('#bars .top .fill').style.width")
    assert width == rows[0][1]  # the bar is as long as the score says
    assert "computed" in browser.eval("document.getElementById('meta').textContent")
    ARTIFACTS.mkdir(exist_ok=True)
    assert browser.screenshot(ARTIFACTS / "playground-predict.png").stat().st_size > 1000
    # the same text again (after another) is answered from the cache, and the page says so
    browser.type_into("#text", "!")
    browser.wait_for("document.getElementById('meta').textContent.includes('computed') && "
                     "document.getElementById('text').value.endsWith('!')")
    browser.eval("document.getElementById('text').value = 'a warm, funny and moving film'")
    browser.eval("document.getElementById('text').dispatchEvent(new Event('input'))")
    browser.wait_for("document.getElementById('meta').textContent.includes('from the cache')")
    for link in ("/docs", "/metrics"):
        status = browser.eval(f"fetch('{link}').then(r => r.status)")
        assert status == 200 and browser.eval(
            f"!!document.querySelector('nav a[href=\"{link}\"]')")


def test_file_upload_runs_a_job_and_downloads_results(browser: Browser, site: str,
                                                      tmp_path: Path) -> None:
    texts = ["loved every minute", "a dull, lifeless mess", "fine", "superb acting",
             "boring", "heartfelt and wise", "a waste of time"]
    upload = tmp_path / "reviews.txt"
    upload.write_text("\n".join(texts) + "\n")
    browser.goto(site + "/")
    browser.wait_for("document.querySelectorAll('#model option').length")
    document = browser.send("DOM.getDocument")
    node = browser.send("DOM.querySelector", nodeId=document["root"]["nodeId"],
                        selector="#file")
    browser.send("DOM.setFileInputFiles", nodeId=node["nodeId"], files=[str(upload)])
    browser.wait_for("!document.getElementById('submit').disabled")
    browser.eval("document.getElementById('submit').click()")
    browser.wait_for("!document.getElementById('download').hidden", timeout=60)
    progress = browser.eval("[document.getElementById('progress').value,"
                            " document.getElementById('progress').max]")
    assert progress == [len(texts), len(texts)]
    assert "succeeded" in browser.eval("document.getElementById('job').textContent")
    ARTIFACTS.mkdir(exist_ok=True)
    browser.screenshot(ARTIFACTS / "playground-job.png")
    body = browser.eval("fetch(document.getElementById('download').href).then(r => r.text())")
    lines = [json.loads(line) for line in body.splitlines()]
    assert [r["index"] for r in lines] == list(range(len(texts)))
    assert {r["label"] for r in lines} <= {"POSITIVE", "NEGATIVE"}
    job_id = browser.eval("document.getElementById('download').download").split("-", 1)[1]
    job = httpx.get(f"{site}/v1/jobs/{job_id.removesuffix('.ndjson')}").json()
    assert job["total"] == len(texts) and job["status"] == "succeeded"
