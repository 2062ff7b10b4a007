"""Per-run reports (``archnet report RUN_DIR``) and side-by-side chip comparisons
(``archnet compare MODEL --chips a,b,c``).

- ``collect``  reading and checking a run folder (convert's and verify's files)
- ``measure``  estimates of the student's and the teacher's graphs, per-layer error
- ``tables``   pandas DataFrames, one CSV each
- ``plots``    matplotlib figures (Agg canvas), PNGs with a provenance footer
- ``markdown`` report.md
- ``staging``  a folder written under a temporary name, then renamed into place
- ``build``    ``write_report``
- ``text``     ``write_text_report``: text runs side by side (sentence-embedding quality in place
               of accuracy; the same history, tables, markdown and staging)
- ``compare``  ``compare_model`` and its text, CSV, JSON and plot
"""

from archnet.report.build import write_report
from archnet.report.compare import compare_model

__all__ = ["compare_model", "write_report"]
