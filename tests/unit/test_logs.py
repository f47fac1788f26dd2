"""personatune.logs: run-dir handler, console handler, main-rank filter."""

from __future__ import annotations

import logging

from personatune.logs import run_logging

log = logging.getLogger("personatune.stages.test")


def test_run_logging_writes_log_txt_and_console(tmp_path, capsys):
    with run_logging(tmp_path):
        log.info("  indented progress line")
        log.warning("a warning")
    log.info("after the block")  # no handler attached any more: not in log.txt
    lines = (tmp_path / "log.txt").read_text(encoding="utf-8").splitlines()
    assert [ln[20:] for ln in lines] == ["indented progress line", "a warning"]
    assert lines[0][4] == "-" and lines[0][13] == ":"  # YYYY-mm-dd HH:MM:SS stamp
    out = capsys.readouterr().out
    assert "  indented progress line\n" in out and "after the block" not in out


def test_other_ranks_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with run_logging(tmp_path):
        log.info("from rank 1")
    assert not (tmp_path / "log.txt").exists() or "rank 1" not in (tmp_path / "log.txt").read_text()
    assert "rank 1" not in capsys.readouterr().out
    monkeypatch.setenv("RANK", "0")
    with run_logging(tmp_path):
        log.info("from rank 0")
    assert "from rank 0" in (tmp_path / "log.txt").read_text()


def test_nested_blocks_print_once(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    with run_logging(tmp_path / "a"):
        with run_logging(tmp_path):
            log.info("once")
    assert capsys.readouterr().out.count("once") == 1
    assert (tmp_path / "log.txt").read_text().count("once") == 1
    assert (tmp_path / "a" / "log.txt").read_text().count("once") == 1
