"""Running the pipeline: Prefect server, status, notifications, inbox watch, cluster."""
