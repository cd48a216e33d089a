"""``znode run --log-format json``: one JSON object per line, for log shippers."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from zchannels.node.logs import JsonFormatter


def test_a_record_is_one_json_line_with_its_structured_fields() -> None:
    formatter = JsonFormatter(node="n1")
    record = logging.LogRecord(
        "zchannels.node", logging.WARNING, __file__, 1, "dropped %d frames", (3,), None
    )
    record.reason = "version"  # as extra={"reason": ...} sets it
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "dropped 3 frames"
    assert entry["level"] == "WARNING" and entry["logger"] == "zchannels.node"
    assert entry["node"] == "n1" and entry["reason"] == "version"
    assert entry["time"].endswith("+00:00")


def test_an_exception_travels_inside_its_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in entry["exception"]


def test_znode_logs_json_lines_that_parse() -> None:
    """A znode refusing an insecure bind says why, as JSON, with its node id."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zchannels.node",
            "run",
            "--log-format",
            "json",
            "--node-id",
            "json-test",
            "--client-endpoint",
            "tcp://192.0.2.1:5555",  # not loopback, no key: refused at start
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert lines, proc.stderr
    error = lines[-1]
    assert error["level"] == "ERROR" and "without a cluster key" in error["message"]
    assert error["node"] == "json-test" and error["reason"] == "InsecureBind"
