"""The analysis wing: reads finished runs' files and draws the paper's figures and tables (no torch, no Hydra).

    runs.py             every run folder read into one tidy table, with each run's status and why it is left out
    selectors.py        the metric queries that tables and plots share (RL curves, classifier accuracy, ...)
    phase_detection.py  the three learning phases read off one reconstruction-loss curve (pure, no I/O)
    tables.py           the phase and transfer tables, mean and std over seeds, as CSV, Markdown and LaTeX
    plots.py            FIGURES: one function per figure, from one sweep's metrics
    report.py           build(outputs): every sweep's figures and tables, then report.html showing them
"""
