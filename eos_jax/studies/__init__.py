"""What the experiments are (plans, runs, tables, verdicts), callable without flags."""
