"""Scoring models: metrics, plots, split and folder evaluation, prediction, domain score, drift."""
