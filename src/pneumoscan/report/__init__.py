"""What a finished run shows a person: figures in ``RUN/plots/`` and one ``RUN/report.html``.

    from pneumoscan.report import write_report
    write_report("runs/default")     # draws every figure, then writes runs/default/report.html
"""
from .html import write_report
from .plots import write_all_plots

__all__ = ["write_report", "write_all_plots"]
