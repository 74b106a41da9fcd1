import json
import logging

from common.logs import JsonFormatter, request_id


def test_json_line_has_request_id_revision_and_extras() -> None:
    formatter = JsonFormatter({"k_service": "predictor", "k_revision": "predictor-00002",
                               "k_configuration": ""})
    record = logging.makeLogRecord({"name": "t", "levelname": "INFO", "msg": "hello %s",
                                    "args": ("world",), "route": "/v1/predict"})
    token = request_id.set("abc123")
    try:
        line = json.loads(formatter.format(record))
    finally:
        request_id.reset(token)
    assert line["msg"] == "hello world" and line["request_id"] == "abc123"
    assert line["k_service"] == "predictor" and line["k_revision"] == "predictor-00002"
    assert "k_configuration" not in line  # empty outside Knative: left out, not ""
    assert line["route"] == "/v1/predict" and line["level"] == "info"
