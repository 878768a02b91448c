"""Analysis of an experiment's results: tidy tables of every run x seed, comparison tables
and figures.

- ``analysis.collect``: read ``results/<experiment>/runs/<run>/seed<k>/...`` into tidy
  DataFrames, each row carrying the file it came from.
- ``analysis.tables``: accuracy (mean ± 95% CI over seeds, paired tests against a baseline)
  and compute efficiency, as Markdown, LaTeX, HTML and CSV.
- ``analysis.figures``: learning curves at equal steps, tokens and seconds; reward curves;
  compute by purpose; generation speed.

Each module has a command line: ``python -m analysis.<module> results/<experiment> ...``.
"""
