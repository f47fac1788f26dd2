"""Progress lines: every step longer than ~10 s shows a rate and an ETA (issue 16)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from personatune.progress import EtaLine

REPO = Path(__file__).resolve().parents[2]


def test_eta_line_throttles_and_always_prints_the_last():
    lines: list[str] = []
    eta = EtaLine("stage 7: sampling", echo=lines.append, unit="prompts", min_interval_s=3600)
    for done in range(1, 11):
        eta(done, 10)
    assert len(lines) == 2  # the first batch, then the end (the interval suppresses the rest)
    assert lines[0].startswith("  stage 7: sampling: 1/10 prompts (") and "ETA" in lines[0]
    assert lines[1].startswith("  stage 7: sampling: 10/10 prompts (") and "done in" in lines[1]


def test_stage3_generation_names_its_step_and_gives_an_eta(tmp_path):
    from personatune.stages.s3_consistency_data import generate_resumable

    class Echo:
        def generate(self, convs, **params):
            return [[c[-1]["content"].upper()] * params["n"] for c in convs]

    jobs = [
        (
            [{"role": "user", "content": f"q{i}"}],
            {"max_new_tokens": 4, "temperature": 0.0, "top_p": 1.0, "n": 1, "seed": 0},
        )
        for i in range(5)
    ]
    lines: list[str] = []
    out = generate_resumable(
        Echo(), jobs, tmp_path / "gen.jsonl", chunk=2, echo=lines.append, label="contrast (teacher)"
    )
    assert out == [[f"Q{i}"] for i in range(5)]
    assert lines[0] == "  contrast (teacher): 5 jobs to generate, 2 per batch (ETA after the first batch)"
    assert [ln.split(" jobs")[0] for ln in lines[1:]] == [
        "  contrast (teacher) 2/5",
        "  contrast (teacher) 4/5",
        "  contrast (teacher) 5/5",
    ]
    assert all("ETA" in ln for ln in lines[1:])


@pytest.mark.stage
def test_hf_backend_reports_progress_per_batch(tiny_varied):
    from personatune.generation.hf import HFBackend

    calls: list[tuple[int, int]] = []
    model, tok = tiny_varied
    convs = [[{"role": "user", "content": f"hello {i}"}] for i in range(5)]
    HFBackend(model, tok, batch_size=2, progress=lambda d, t: calls.append((d, t))).generate(
        convs, max_new_tokens=2, temperature=0.0
    )
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_license_is_an_spdx_string():
    """setuptools warns at every install when project.license is a table (PEP 639: an SPDX expression)."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"
    assert any(r.startswith("setuptools>=77") for r in meta["build-system"]["requires"])
