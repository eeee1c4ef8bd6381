"""Comparisons across runs: `python -m simu_lightning.report RUN_OR_SWEEP_DIR... [--out DIR]`.

Reads every run directory below the given folders (a folder holding `results.json`), groups the runs by
method and swept setting (every override but the seed), and writes `report.md`, `report.csv` and
`pareto.png`: the mean and a 95% confidence interval over seeds of every after-metric, and the
utility at matched forgetting, read off each run's trajectory (`curve.jsonl`) where it first reaches a
forget level, interpolated between evaluation points; one group minus each other there, paired by seed
(compare.py); every Sophia run's median win rate and each group's trained parameters (health.py). Tuning
runs (a seed in `tuned.seeds`) are kept apart from the runs that report their settings.
"""
