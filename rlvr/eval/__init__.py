"""Evaluation: unbiased pass@k, held-out accuracy, plots."""
