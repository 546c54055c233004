"""Benchmarks: workload generators, load generators and measurements of the router and engine."""
