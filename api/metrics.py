"""Prometheus metrics of one API process (its own registry, no globals). Counters count what
this process consumed; Prometheus sums the processes of a deployment."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric

# Digit models score around 1-10 (elbo_per_tv) or 20-300 (elbo); a wide log scale covers both.
SCORE_BUCKETS = tuple(round(2 ** (i / 2), 4) for i in range(-8, 33))  # 1/16 .. 65536
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# The share of a part above its line's pixel threshold: 0 for most, a defect 0.1 % to 10 %.
AREA_BUCKETS = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
REGION_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16)


class LostItems:
    """``vlaewatch_items_lost_total``: the deployment's count, kept in Redis by the scorer
    (``StreamKeys.lost``) and read at each scrape; every API process exports the same value,
    so dashboards take its ``max``."""

    def __init__(self) -> None:
        self.value = 0.0

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "vlaewatch_items_lost",
            "Score entries trimmed before every consumer group acknowledged them",
        )
        family.add_metric([], self.value)
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.items = Counter("vlaewatch_items_scored", "Score entries consumed", ["line"],
                             registry=r)  # fmt: skip
        self.alerts = Counter("vlaewatch_alerts", "Alerts raised", ["line"], registry=r)
        self.scores = Histogram("vlaewatch_score", "Scores consumed (the model's score kind)",
                                ["line"],
                                buckets=SCORE_BUCKETS, registry=r)  # fmt: skip
        self.defect_area = Histogram("vlaewatch_defect_area",
                                     "Share of each item above its line's pixel threshold "
                                     "(items of lines that have one)", ["line"],
                                     buckets=AREA_BUCKETS, registry=r)  # fmt: skip
        self.alert_regions = Histogram("vlaewatch_alert_regions",
                                       "Regions per alert (alerts of lines with a pixel "
                                       "threshold)", ["line"],
                                       buckets=REGION_BUCKETS, registry=r)  # fmt: skip
        self.deadletters = Counter("vlaewatch_consumer_deadletters",
                                   "Score entries that could not be parsed",
                                   registry=r)  # fmt: skip
        self.lag = Gauge("vlaewatch_consumer_lag", "Score entries not yet delivered to the group",
                         registry=r)  # fmt: skip
        self.lag_seconds = Gauge("vlaewatch_consumer_lag_seconds",
                                 "Age of the newest score entry the group has not read yet",
                                 registry=r)  # fmt: skip
        self.pending = Gauge("vlaewatch_consumer_pending",
                             "Score entries delivered but not acknowledged",
                             registry=r)  # fmt: skip
        self.calibrations = Counter("vlaewatch_calibrations",
                                    "Threshold calibrations", ["method", "applied"],
                                    registry=r)  # fmt: skip
        self.threshold = Gauge("vlaewatch_threshold", "Current threshold by line", ["line"],
                               registry=r)  # fmt: skip
        self.pixel_threshold = Gauge("vlaewatch_pixel_threshold",
                                     "Current pixel (region) threshold by line", ["line"],
                                     registry=r)  # fmt: skip
        self.lost = LostItems()
        r.register(self.lost)
        self.requests = Histogram("vlaewatch_http_request_duration_seconds",
                                  "HTTP request latency", ["method", "route", "status"],
                                  buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip

    def threshold_gauge(self, target: str) -> Gauge:
        return self.threshold if target == "image" else self.pixel_threshold

    def render(self) -> bytes:
        """Prometheus text exposition format."""
        return generate_latest(self.registry)
