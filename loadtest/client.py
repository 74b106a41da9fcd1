"""A lean HTTP/1.1 keep-alive client for load generation.

The load generator shares the machine's two cores with the server, so its per-request cost must
be small: one connection per virtual user, one write, one read, no per-request allocation of
client objects (httpx costs several times more CPU per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    seconds: float

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class Connection:
    """One persistent connection; reconnects when the server closes it."""

    def __init__(self, base_url: str):
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def post_json(self, path: str, payload: Any) -> Reply:
        """POST a JSON body; returns status, body and elapsed seconds."""
        body = json.dumps(payload).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        return await self._request(head.encode() + body)

    async def get(self, path: str) -> Reply:
        """GET a path."""
        return await self._request(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())

    async def _request(self, raw: bytes, retry: bool = True) -> Reply:
        started = time.perf_counter()
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        try:
            self._writer.write(raw)
            header = await self._reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            await self.close()
            if not retry:
                raise
            return await self._request(raw, retry=False)
        status, length, closing = _parse_head(header)
        body = await self._reader.readexactly(length) if length else b""
        if closing:
            await self.close()
        return Reply(status, body, time.perf_counter() - started)

    async def close(self) -> None:
        """Close the socket (the next request reconnects)."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


def _parse_head(header: bytes) -> tuple[int, int, bool]:
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, closing = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        lowered = name.strip().lower()
        if lowered == "content-length":
            length = int(value)
        elif lowered == "connection" and value.strip().lower() == "close":
            closing = True
    return status, length, closing
