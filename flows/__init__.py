"""Prefect flows.

A served flow run is a fresh process that imports its flow from this package before any task loads
TensorFlow, so the package quiets TensorFlow's native log lines here (see `cxr.core.native_logs`).
"""

from cxr.core.native_logs import quiet_native_logs

quiet_native_logs()
