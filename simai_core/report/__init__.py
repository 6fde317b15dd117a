"""Comparing and reporting runs: the regression gate, FOM tables, plots and the Markdown/HTML report.

The pytest plugin uses :func:`compare_runs` and :func:`print_fom_table` on already-loaded JSON;
the ``simai-bench`` command line (:mod:`simai_core.cli`) wraps them for files and storage.
"""

from __future__ import annotations

from simai_core.report.compare import Comparison, Row, compare_runs
from simai_core.report.loading import ReportInputError, Run, load_run, parse_run
from simai_core.report.table import fom_table, print_fom_table

__all__ = ["Comparison", "ReportInputError", "Row", "Run", "compare_runs", "fom_table", "load_run", "parse_run",
           "print_fom_table"]
