"""Evaluation: metrics, results.json and RESULTS.md, plots."""
