"""The MLflow side: the run, versions, registration and gate, model card, the pyfunc."""
