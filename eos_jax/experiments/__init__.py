"""What the experiments are (plans, tables, verdicts), callable from a notebook or a test."""
