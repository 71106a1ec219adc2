"""Benchmarks of the pipeline: each result is a ratio of two things timed in the same run on the same files.

Run `python -m bench --quick --json`; see docs/benchmarks.md for what each ratio means and its goal.
"""
