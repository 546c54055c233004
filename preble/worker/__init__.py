"""A worker: an HTTP frontend process and an engine process joined by ZeroMQ (`server.run_worker`
starts both)."""
