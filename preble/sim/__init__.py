"""Discrete-event simulator of many replicas behind one routing policy.

Each simulated replica runs the real local scheduler, radix cache and page allocator of
`preble.core`; forward passes take the time the cost model gives; the router is the real policy
object, fed the same KV events and load reports a live router receives. Nothing here imports
server, engine or model code.

    from preble.sim import SimConfig, SimRequest, simulate, summarize
    records = simulate(requests, SimConfig(replicas=8, policy="latency"))
    print(summarize(records))
"""

from .cluster import SimCluster, SimConfig, SimRecord, SimRequest, simulate
from .report import summarize

__all__ = ["SimCluster", "SimConfig", "SimRecord", "SimRequest", "simulate", "summarize"]
