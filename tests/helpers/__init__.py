"""Builders and harnesses the tests share (no test module imports another)."""
