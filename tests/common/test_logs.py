"""Logging goes to the stderr of the moment, so a replaced (and closed) stderr is never written to."""

from __future__ import annotations

import io
import logging
import sys

from lmfusion_cli.common.logs import setup_logging


def test_log_lines_follow_a_replaced_stderr(monkeypatch):
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    setup_logging()
    logging.getLogger("lmfusion_cli.test").info("one")
    first.close()  # e.g. an earlier command's captured stream, gone now
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    setup_logging()
    logging.getLogger("lmfusion_cli.test").info("two")
    assert "two" in second.getvalue()
