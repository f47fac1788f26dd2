"""A run directory keeps its finished stages when the checkout around it moves (the persona's path changes, its
content does not), and a record written with the cache key of before 2026-12-01 still counts as unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from personatune.config import load_config
from personatune.pipeline import STAGES, legacy_stage_cache_key, run_pipeline, stage_cache_key

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, persona: Path) -> str:
    cfg = load_config(REPO / "examples" / "tiny.yaml", [f"persona={persona}", f"run_dir={tmp_path / 'runs'}"])
    lines: list[str] = []
    assert run_pipeline(cfg, until="02_persona", echo=lines.append) == 0, "\n".join(lines)
    return "\n".join(lines)


def _persona_at(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(REPO / "examples" / "personas" / "captain_nova.yaml", folder / "persona.yaml"))


def test_moved_persona_path_keeps_finished_stages_and_changed_content_does_not(tmp_path):
    first = _run(tmp_path, _persona_at(tmp_path / "checkout_a"))
    assert "SFT preparation (baseline model): running" in first
    moved = _persona_at(tmp_path / "checkout_b")
    again = _run(tmp_path, moved)
    assert "SFT preparation (baseline model): done earlier" in again and "Persona definition: done earlier" in again
    moved.write_text(moved.read_text(encoding="utf-8").replace("Captain Nova", "Captain Vega"), encoding="utf-8")
    edited = _run(tmp_path, moved)
    assert "Persona definition: running" in edited  # the content still decides


def test_a_record_with_the_legacy_key_is_kept_and_rewritten(tmp_path):
    persona = _persona_at(tmp_path / "checkout")
    _run(tmp_path, persona)
    cfg = load_config(REPO / "examples" / "tiny.yaml", [f"persona={persona}", f"run_dir={tmp_path / 'runs'}"])
    manifest = tmp_path / "runs" / "tiny" / "manifest.json"
    m = json.loads(manifest.read_text())
    first_two = [s for s in STAGES if s.id in ("01_baseline", "02_persona")]
    for st in first_two:
        assert legacy_stage_cache_key(cfg, st) != stage_cache_key(cfg, st)  # both read the persona: path hashed before
        m["stages"][st.id]["config_hash"] = legacy_stage_cache_key(cfg, st)
    manifest.write_text(json.dumps(m))
    out = _run(tmp_path, persona)
    assert "SFT preparation (baseline model): done earlier" in out and "Persona definition: done earlier" in out
    m = json.loads(manifest.read_text())
    assert [m["stages"][st.id]["config_hash"] for st in first_two] == [stage_cache_key(cfg, st) for st in first_two]
