"""Deployments of the `retrain` flow: `serve.py` (one process, `cxr serve`) and `prefect.yaml` (work pool)."""
