"""Logging for the command line: progress at INFO, through the progress bar.

``segprompt`` commands log progress ("resuming ...: 36 rows already done") at INFO and problems
at WARNING. :func:`setup_cli_logging` shows the project's own INFO lines by default (other
libraries' only from WARNING) and writes every record with ``tqdm.write``, so that a line
logged while a progress bar runs is printed above the bar instead of breaking it into
fragments. Python warnings (``warnings.warn``) go the same way.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

#: the packages whose INFO lines the CLI shows by default
PROJECT_LOGGERS = ("segprompt", "pointprompt", "tunevlseg", "viewers")


class TqdmHandler(logging.Handler):
    """A handler that prints through ``tqdm.write`` (to stderr), keeping progress bars whole."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


class CliFormatter(logging.Formatter):
    """INFO lines as plain messages; WARNING and above prefixed with the level (``warning: ...``);
    with ``debug`` every line names its level and logger."""

    def __init__(self, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.name == "py.warnings" and not self.debug:
            msg = _warning_text(msg)
        if record.exc_info and self.debug:
            msg += "\n" + self.formatException(record.exc_info)
        if self.debug:
            return f"{record.levelname} {record.name}: {msg}"
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {msg}"
        return msg


_WARNING_LINE = re.compile(r"^(?P<where>.+?):(?P<line>\d+): (?P<category>\w+): (?P<message>.*)$")


def _warning_text(text: str) -> str:
    """``warnings.warn``'s two-line ``file:line: Category: message\\n  source`` as one line:
    ``message (Category from module)``."""
    first = text.strip().splitlines()[0] if text.strip() else text
    m = _WARNING_LINE.match(first)
    if not m:
        return first
    module = Path(m["where"]).stem
    return f"{m['message']} ({m['category']} from {module})"


def setup_cli_logging(verbosity: str = "info") -> None:
    """Configure logging for one CLI invocation.

    ``verbosity``: ``"quiet"`` (warnings and errors only), ``"info"`` (default: the project's
    progress lines), ``"debug"`` (everything, with logger names).
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, TqdmHandler):
            root.removeHandler(h)
    handler = TqdmHandler()
    handler.setFormatter(CliFormatter(debug=verbosity == "debug"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity == "debug" else logging.WARNING)
    own = {"quiet": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}[verbosity]
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(own)
    logging.captureWarnings(True)


__all__ = ["CliFormatter", "PROJECT_LOGGERS", "TqdmHandler", "setup_cli_logging"]
