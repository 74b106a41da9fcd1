"""Redis with a password, and over TLS (rediss://), for both roles: predictions cache, jobs
run on a real worker, and the password never shows in logs, settings dumps or error bodies."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from common.redis_server import RedisServer, TlsFiles, tls_redis_binary
from common.settings import Settings
from tests.integration.test_jobs import jobs_redis, start_worker, wait_done

__all__ = ["jobs_redis", "start_worker"]

PASSWORD = "s3cr3t-p@ss/w0rd%!"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certs(tmp_path: Path) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    d = tmp_path / "tls"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            "/CN=surgeserve test CA", "-keyout", "ca.key", "-out", "ca.crt", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.crt", cwd=d)
    return TlsFiles(cert=d / "server.crt", key=d / "server.key", ca=d / "ca.crt")


def exercise(make_app, live_server, start_worker, cache: RedisServer,  # type: ignore[no-untyped-def]
             jobs: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    start_worker(SURGE_REDIS_URL=jobs.url, SURGE_CACHE_URL=cache.url)
    app = make_app(cache_url=cache.url, redis_url=jobs.url, lru_size=0)
    with live_server(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        first = client.post("/v1/predict", json={"text": "secured cache"}).json()
        seen = ""
        for _ in range(50):  # the write-back is asynchronous
            again = client.post("/v1/predict", json={"text": "secured cache"}).json()
            if again["cached"]:
                break
        assert first["cached"] is False and again["cached"] is True  # through the Redis tier
        assert client.get("/readyz").json()["cache"]["redis"] == "up"
        job = client.post("/v1/jobs", json={"texts": ["one", "two", "three"]}).json()
        assert wait_done(client, job["id"])["status"] == "succeeded"
        seen += client.get("/readyz").text + client.get("/metrics").text
    wrong_url = jobs.url.replace(quote(PASSWORD, safe=""), "wrong")
    assert wrong_url != jobs.url
    wrong = make_app(redis_url=wrong_url, cache_url=cache.url)
    with live_server(wrong) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        refused = client.post("/v1/jobs", json={"texts": ["x"]})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "jobs_unavailable"
        seen += refused.text
    worker_log = (tmp_path / "worker.log").read_text()
    settings = Settings(cache_url=cache.url, redis_url=jobs.url)
    for text in (seen, caplog.text, worker_log, str(settings.masked())):
        assert PASSWORD not in text and "s3cr3t" not in text
    assert "***" in str(settings.masked())


def test_password_protected_redis(make_app, live_server, start_worker, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisServer("cache", tmp_path / "c", password=PASSWORD).start()
    jobs = RedisServer("jobs", tmp_path / "j", password=PASSWORD).start()
    try:
        exercise(make_app, live_server, start_worker, cache, jobs, tmp_path, caplog)
    finally:
        cache.stop()
        jobs.stop()


def test_tls_redis(make_app, live_server, start_worker, tmp_path: Path, certs: TlsFiles,
                   caplog: pytest.LogCaptureFixture) -> None:
    if tls_redis_binary() is None:
        pytest.skip("no TLS-capable redis-server (make install unpacks Debian's redis 7)")
    cache = RedisServer("cache", tmp_path / "c", password=PASSWORD, tls=certs).start()
    jobs = RedisServer("jobs", tmp_path / "j", password=PASSWORD, tls=certs).start()
    try:
        assert cache.url.startswith("rediss://") and jobs.url.startswith("rediss://")
        exercise(make_app, live_server, start_worker, cache, jobs, tmp_path, caplog)
    finally:
        cache.stop()
        jobs.stop()
