"""The scheduling core: radix cache, page accounting, request state and local scheduling.

Pure Python with no torch, sockets or web frameworks, so that the engine, the router and the
simulator drive the very same objects.
"""
