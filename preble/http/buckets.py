"""The histogram buckets of the router's and the worker's latency metrics: one definition, so
their Prometheus histograms compare bucket by bucket."""

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120)  # seconds: TTFT, request latency
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)  # seconds per output token
