"""How ``znode`` writes its log: plain text for people, JSON lines for machines.

Owns: the two formats ``znode run --log-format text|json`` chooses between,
and the fields every JSON line carries. Does not own: what is logged (each
module logs its own events) or rate limiting (``zchannels.node.server``).

A JSON line is one object: ``time`` (ISO 8601, UTC, milliseconds), ``level``,
``logger``, ``message`` (the formatted text), ``node`` (this node's id, once
known), then every structured field a call passed as ``extra={...}`` (such as
``peer`` or ``reason``), and ``exception`` (the formatted traceback) when
there is one. Log shippers (Loki, Elasticsearch, CloudWatch) take it as is.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

#: LogRecord attributes of the logging module itself: the rest are the
#: structured fields a call added with ``extra=``
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, one record per line."""

    def __init__(self, node: str | None = None) -> None:
        super().__init__()
        #: this node's id, on every line (set once the node knows it)
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.node is not None:
            entry["node"] = self.node
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup(level: str, fmt: str, node: str | None = None) -> logging.Formatter:
    """Configure the root logger for ``znode run``: ``fmt`` is ``text`` or
    ``json``; returns the formatter (the caller may set its ``node``)."""
    formatter: logging.Formatter = (
        JsonFormatter(node) if fmt == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return formatter
