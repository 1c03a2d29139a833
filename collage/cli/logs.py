"""Logging set-up: one JSON object per line for log collectors, readable text in a terminal."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

# Attributes every LogRecord has; anything else on a record came from `extra=` and is shown.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...`, for people reading a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{key}={value}"
            for key, value in vars(record).items()
            if key not in _STANDARD and value is not None and not key.startswith("_")
        )
        line = super().format(record)
        return f"{line} {extras}" if extras else line


def configure(log_format: str = "auto", *, level: int = logging.INFO) -> None:
    """Send logs to stderr as JSON (or text when `log_format` is text, or auto on a TTY)."""
    use_text = log_format == "text" or (log_format == "auto" and sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        TextFormatter()
        if use_text
        else JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            json_default=str,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Procrastinate logs every job at INFO; ours already says what happened to each SKU.
    logging.getLogger("procrastinate").setLevel(max(level, logging.WARNING))
