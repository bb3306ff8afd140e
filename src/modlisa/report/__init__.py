"""Analysis of run folders: tables, plots and the comparison with LISA (`modlisa analyze`).

Reads only files (the run-folder contract of DESIGN.md); knows nothing of torch modules.
"""

from modlisa.report.analyze import ReportFiles, build_report
from modlisa.report.runs import NotARunError, RunData, load_run, load_runs

__all__ = ["NotARunError", "ReportFiles", "RunData", "build_report", "load_run", "load_runs"]
