"""The HTTP pieces the router and the worker share: OpenAI request and response shapes, errors,
request limits, logging and metric buckets."""
