"""The report index (README.md) names every file in reports/."""


def test_every_committed_report_has_a_sentence_in_the_index():
    """reports/ files the sweep does not draw each need an OTHER_REPORTS sentence, or a later
    `npusim report` lists them without saying what they are."""
    from pathlib import Path

    from npusim.report.sweep_report import FIGURES, OTHER_REPORTS, RESULTS_CSV, other_reports_lines

    reports = Path(__file__).resolve().parents[3] / "reports"
    ours = {f"{s}.{e}" for s in FIGURES for e in ("png", "csv")} | {RESULTS_CSV, "README.md"}
    others = sorted(p for p in reports.iterdir() if p.is_file() and p.name not in ours
                    and not p.name.startswith("."))
    assert {p.stem for p in others} <= set(OTHER_REPORTS)
    lines = other_reports_lines(others)
    assert len(lines) == 3 + len({p.stem for p in others})
    assert other_reports_lines([]) == []
