"""Evaluation: unbiased pass@k, maj@k, bootstrap intervals, cached sample collection, model
comparison, test-time scaling, plots and the HTML run report."""
