"""The self-contained HTML report of a run directory (`personatune report RUN_DIR`).

    html.py     build_report / render_report: the page and its sections
    charts.py   inline SVG bar and line charts, heat colours
    load.py     tolerant, read-only access to a run directory's files
"""

from personatune.report.html import build_report, render_report

__all__ = ["build_report", "render_report"]
