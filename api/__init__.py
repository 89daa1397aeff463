"""FastAPI service: alerts, thresholds, previews and metrics over the score stream."""
