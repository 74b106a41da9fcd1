"""Open Inference Protocol (KServe / Triton "v2" REST): health, server and model metadata,
and infer with a BYTES tensor of texts in, `label` (BYTES), `score` (FP32) and `scores`
(FP32, one column per label in the model's label order) out. JSON tensors and the binary tensor
data extension (what tritonclient sends by default) both work. Requests go through the same
cache and micro-batcher as /v1; errors are the protocol's `{"error": "<message>"}`."""

from __future__ import annotations

import json
import math
import struct
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from common.errors import InvalidInput, ProtocolError, SurgeError
from common.schemas import PRICED_BY_TEXTS, ProtocolErrorBody, error_docs
from common.textnorm import is_text
from online.runtime import Runtime
from online.security import charge
from online.service import PredictionService

router = APIRouter(tags=["open inference protocol"])


def _documented(*codes: int) -> dict[int | str, dict[str, Any]]:
    return error_docs(*codes, model=ProtocolErrorBody)


HEADER_LENGTH = "inference-header-content-length"
OUTPUTS = ("label", "score", "scores")


async def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


def _translated(exc: SurgeError) -> ProtocolError:
    """A service error as the protocol says it: bad input is a 400 (its detail in the
    message), the rest keep their status."""
    if isinstance(exc, InvalidInput):
        detail = f" ({json.dumps(exc.detail)})" if exc.detail else ""
        return ProtocolError(400, exc.message + detail)
    return ProtocolError(exc.status, exc.message)


def _service(rt: Runtime, name: str, version: str | None = None) -> PredictionService:
    try:
        service = rt.require_service(name)
    except SurgeError as exc:  # not loaded yet (503), or no such model (404)
        raise _translated(exc) from exc
    if version is not None and version != service.bundle.version:
        raise ProtocolError(404, f"model {name!r} has no version {version!r} "
                                 f"(serving {service.bundle.version})")
    return service


@router.get("/v2")
async def server_metadata() -> dict[str, Any]:
    """Server metadata."""
    return {"name": "surgeserve", "version": "0.1.0", "extensions": ["binary_tensor_data"]}


@router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    """Liveness."""
    return {"live": True}


@router.get("/v2/health/ready", responses={503: {"description": "not ready"}})
async def ready(rt: RuntimeDep) -> Response:
    """Readiness: every model loaded and not draining."""
    return JSONResponse({"ready": rt.ready}, status_code=200 if rt.ready else 503)


@router.get("/v2/models/{name}", responses=_documented(404, 503))
async def model_metadata(name: str, rt: RuntimeDep) -> Response:
    """Model metadata: versions, platform, input and output tensors."""
    return _metadata(rt, name, None)


@router.get("/v2/models/{name}/versions/{version}", responses=_documented(404, 503))
async def model_version_metadata(name: str, version: str, rt: RuntimeDep) -> Response:
    """Metadata of one version (404 unless it is the version served)."""
    return _metadata(rt, name, version)


def _metadata(rt: Runtime, name: str, version: str | None) -> Response:
    bundle = _service(rt, name, version).bundle
    return JSONResponse({
        "name": name, "versions": [bundle.version], "platform": f"surgeserve-{bundle.engine.kind}",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "score", "datatype": "FP32", "shape": [-1]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, len(bundle.labels)]}],
        "parameters": {"labels": bundle.labels}})


@router.get("/v2/models/{name}/ready", responses=_documented(404, 503))
async def model_ready(name: str, rt: RuntimeDep) -> Response:
    """Model readiness (404 for a model not served)."""
    return _ready(rt, name, None)


@router.get("/v2/models/{name}/versions/{version}/ready", responses=_documented(404, 503))
async def model_version_ready(name: str, version: str, rt: RuntimeDep) -> Response:
    """Readiness of one version."""
    return _ready(rt, name, version)


def _ready(rt: Runtime, name: str, version: str | None) -> Response:
    if not rt.services:  # still loading (or the load failed): not ready, not an error
        return JSONResponse({"name": name, "ready": False}, status_code=503)
    _service(rt, name, version)  # 404 for a model or version not served
    return JSONResponse({"name": name, "ready": not rt.draining})


@router.post("/v2/models/{name}/infer", openapi_extra=PRICED_BY_TEXTS,
             responses=_documented(400, 404, 413, 503, 504))
async def infer(name: str, request: Request, rt: RuntimeDep) -> Response:
    """Classify a BYTES tensor of texts (shape [N] or [N, 1])."""
    return await _infer(rt, request, name, None)


@router.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=PRICED_BY_TEXTS,
             responses=_documented(400, 404, 413, 503, 504))
async def infer_version(name: str, version: str, request: Request, rt: RuntimeDep) -> Response:
    """Infer with one version (404 unless it is the version served)."""
    return await _infer(rt, request, name, version)


async def _infer(rt: Runtime, request: Request, name: str, version: str | None) -> Response:
    service = _service(rt, name, version)
    header, texts = _parse(await request.body(), request.headers.get(HEADER_LENGTH))
    wanted = _wanted_outputs(header)
    await charge(request, len(texts))  # RateLimited: the guard's 429, as documented
    try:
        results = await service.predict_many(texts)
    except SurgeError as exc:
        raise _translated(exc) from exc
    labels = service.bundle.labels
    tensors: dict[str, tuple[str, list[int], list[Any]]] = {
        "label": ("BYTES", [len(results)], [r.label for r in results]),
        "score": ("FP32", [len(results)], [r.score for r in results]),
        "scores": ("FP32", [len(results), len(labels)],
                   [dict(r.scores)[label] for r in results for label in labels]),
    }
    body: dict[str, Any] = {"model_name": name, "model_version": service.bundle.version}
    if "id" in header:
        body["id"] = header["id"]
    return _encode(body, [(n, *tensors[n], binary) for n, binary in wanted])


def _parse(raw: bytes, header_length: str | None) -> tuple[dict[str, Any], list[str]]:
    """The request's JSON header and its one BYTES input, from JSON or binary tensor data.
    Anything malformed, mistyped or lying about its lengths is a 400, as KServe answers."""
    split = _header_split(raw, header_length)
    try:
        header = json.loads(raw[:split])
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(400, "the request is not a valid inference request "
                                 "(JSON header expected)") from exc
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise ProtocolError(400, "an inference request needs \"inputs\": [tensor]")
    request_id = header.get("id")
    if request_id is not None and not (isinstance(request_id, str) and is_text(request_id)):
        raise ProtocolError(400, "\"id\" must be a string")
    _parameters(header, "the request")
    if len(header["inputs"]) != 1:
        raise ProtocolError(400, f"expected exactly one input tensor (BYTES texts), got "
                                 f"{len(header['inputs'])}")
    tensor = header["inputs"][0]
    if not isinstance(tensor, dict) or tensor.get("datatype") != "BYTES":
        raise ProtocolError(400, "the input tensor must have datatype BYTES")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not shape or len(shape) > 2
            or not all(type(d) is int and d >= 0 for d in shape)
            or (len(shape) == 2 and shape[1] != 1)):
        raise ProtocolError(400, "the input shape must be [N] or [N, 1]")
    count = math.prod(shape)
    size = _parameters(tensor, "the input tensor").get("binary_data_size")
    blob = raw[split:]
    if size is None and blob:
        raise ProtocolError(400, "binary data follows the JSON header but the input tensor "
                                 "has no binary_data_size")
    if size is not None:
        if type(size) is not int or size != len(blob):  # type(): True is no size either
            raise ProtocolError(400, f"binary_data_size must be the number of bytes after the "
                                     f"JSON header ({len(blob)}), got "
                                     f"{size if type(size) is int else type(size).__name__}")
        texts = _binary_strings(blob, count)
    else:
        texts = _json_strings(tensor.get("data"), count)
    if not texts:
        raise ProtocolError(400, "the input tensor is empty")
    return header, texts


def _header_split(raw: bytes, header_length: str | None) -> int:
    """Where the JSON header ends: Inference-Header-Content-Length, or the whole body."""
    if header_length is None:
        return len(raw)
    value = header_length.strip()
    if not (value.isascii() and value.isdigit()) or int(value) > len(raw):
        raise ProtocolError(400, f"{HEADER_LENGTH} must be the JSON header's length in "
                                 f"bytes (at most the body's {len(raw)})")
    return int(value)


def _parameters(owner: dict[str, Any], what: str) -> dict[str, Any]:
    """An object's `parameters`: absent, or a JSON object."""
    found = owner.get("parameters")
    if found is None:
        return {}
    if not isinstance(found, dict):
        raise ProtocolError(400, f"the parameters of {what} must be a JSON object")
    return found


def _json_strings(data: Any, count: int) -> list[str]:
    """BYTES data as JSON: a flat list of strings, or one list of strings per row (shape
    [N, 1]); nothing deeper (no recursion on client input)."""
    if not isinstance(data, list):
        raise ProtocolError(400, "BYTES input data must be a list of strings")
    flat: list[str] = []
    for item in data:
        if isinstance(item, str):
            flat.append(item)
        elif isinstance(item, list) and all(isinstance(t, str) for t in item):
            flat.extend(item)
        else:
            raise ProtocolError(400, "BYTES input data must be a list of strings (or of "
                                     "one-string rows)")
    if len(flat) != count:
        raise ProtocolError(400, f"the input shape says {count} elements, data has {len(flat)}")
    return flat


def _binary_strings(blob: bytes, count: int) -> list[str]:
    """BYTES elements in the binary extension: 4-byte little-endian length, then the bytes."""
    texts, offset = [], 0
    try:
        while offset < len(blob):
            (length,) = struct.unpack_from("<I", blob, offset)
            offset += 4
            if offset + length > len(blob):
                raise ProtocolError(400, "a binary BYTES element is longer than the data left")
            texts.append(blob[offset:offset + length].decode("utf-8"))
            offset += length
    except (struct.error, UnicodeDecodeError) as exc:
        raise ProtocolError(400, "malformed binary BYTES tensor data") from exc
    if len(texts) != count:
        raise ProtocolError(400, f"the input shape says {count} elements, the binary data "
                                 f"holds {len(texts)}")
    return texts


def _wanted_outputs(header: dict[str, Any]) -> list[tuple[str, bool]]:
    """(output name, as binary data) for each requested output; all three (JSON) if none."""
    binary_all = bool(_parameters(header, "the request").get("binary_data_output"))
    requested = header.get("outputs")
    if requested is None or requested == []:
        return [(name, binary_all) for name in OUTPUTS]
    if not isinstance(requested, list):
        raise ProtocolError(400, "\"outputs\" must be a list of {\"name\": ...}")
    wanted = []
    for output in requested:
        name = output.get("name") if isinstance(output, dict) else None
        if not isinstance(name, str) or name not in OUTPUTS:
            raise ProtocolError(400, f"unknown output {name!r:.80}: the outputs are "
                                     f"{', '.join(OUTPUTS)}")
        binary = _parameters(output, f"output {name}").get("binary_data", binary_all)
        wanted.append((name, bool(binary)))
    return wanted


def _encode(body: dict[str, Any], tensors: list[tuple[str, str, list[int], list[Any], bool]],
            ) -> Response:
    """The response: JSON, or a JSON header followed by binary tensor data."""
    outputs, blobs = [], []
    for name, datatype, shape, data, binary in tensors:
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            blob = (b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in data)
                    if datatype == "BYTES" else struct.pack(f"<{len(data)}f", *data))
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = data
        outputs.append(tensor)
    header = json.dumps(body | {"outputs": outputs}, separators=(",", ":")).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})
