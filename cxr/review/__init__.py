"""The review loop: referred images queued, labelled by people in Label Studio, and returned as training data."""
