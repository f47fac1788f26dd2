"""The self-contained HTML report of a run directory (`personatune report RUN_DIR`).

html.py      build_report / render_report: the page shell (header, navigation, CSS, run files)
sections.py  the quality gates and stages 1-4 (baseline, persona, data coverage, persona evaluation)
curves.py    stages 5-6: training curves over steps and rounds, the rounds table
final.py     stage 7 (final.json) and the side-by-side sample responses
cells.py     escaping, number formats, table cells and section frames shared by the above
charts.py    inline SVG bar and line charts, heat colours
load.py      tolerant, read-only access to a run directory's files, typed by personatune.records
"""

from personatune.report.html import build_report, render_report

__all__ = ["build_report", "render_report"]
