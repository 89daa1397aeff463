"""vlaewatch: anomaly detection for visual inspection lines (a thin CLI over the packages)."""

__version__ = "0.1.0"
