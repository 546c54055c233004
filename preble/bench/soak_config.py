"""`preble bench soak`'s configuration, apart from the soak itself (preble/bench/soak.py) so that
the command line reads its defaults from here and still starts fast."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.routing import DEFAULT_POLICY
from ..router.config import RouterServerConfig


@dataclass(frozen=True)
class DocumentedError:
    """A 5xx the router's documentation promises, recognised by its status and the start of its
    message; `where` names the documentation."""

    status: int
    message: str
    where: str


# The 5xx answers the router documents: any other 5xx fails the soak.
DOCUMENTED_5XX = (
    DocumentedError(503, "no healthy worker", "README.md (Failures: 503 while no worker is healthy); "
                    "docs/architecture.md (router admission)"),
    DocumentedError(502, "the worker failed mid-stream", "README.md (a stream cut after its first chunk ends "
                    "with an OpenAI error event); docs/architecture.md (Failure handling, retries)"),
)


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 600.0  # how long load and chaos run
    workers: int = 3
    policy: str = DEFAULT_POLICY
    model: str | None = None  # HF folder; None: a tiny random llama written to a temporary folder
    # KV pages per worker: far more than a run stores, so no worker evicts and the router's
    # just-routed prompts always become pages the worker holds (see the KV check in soak_chaos.py)
    num_pages: int = 32768
    startup_timeout_s: float = 300.0
    seed: int = 0

    # Load: Poisson arrivals, at most `clients` requests in flight (an arrival waits for a free client)
    rate: float = 8.0  # requests/s offered
    clients: int = 12
    shared_blocks: int = 4  # system blocks the prompts share
    block_words: int = 40  # words of each shared block
    tail_words: int = 8  # words of each request's own tail
    word_letters: tuple[int, int] = (3, 8)  # a generated word's length range
    max_tokens: tuple[int, int] = (8, 32)  # an answer's length range (EOS ignored: every answer is that long)
    chat_share: float = 0.5  # of requests, to /v1/chat/completions (the rest /v1/completions)
    stream_share: float = 0.6
    cancel_share: float = 0.15  # of streamed requests, clients that disconnect on purpose
    cancel_after_chunks: int = 2  # ... after this many chunks with text
    request_timeout_s: float = 120.0  # a request with no outcome by then is hung (the slowest takes seconds)

    # Chaos: one event at a time on a random worker, a kill (SIGKILL) or a stop (SIGSTOP, then SIGCONT)
    chaos_interval_s: float = 4.0  # mean pause after an event has recovered ...
    chaos_jitter: float = 0.5  # ... drawn uniformly within this share of it either side
    chaos_start_s: float = 5.0  # no event before this
    chaos_quiet_tail_s: float = 15.0  # nor in the run's last seconds: the last recovery happens under load
    # A stopped worker stays stopped this long: above the router's health timeout, so that it is
    # routed around and its streams are cut before it resumes
    stop_s: float = 2 * RouterServerConfig.health_timeout_s
    recover_timeout_s: float = 120.0  # a worker not healthy again by then fails the soak
    kv_settle_s: float = 10.0  # an idle worker's cache and the router's picture of it must agree within this
    poll_s: float = 0.1  # how often the router is asked while waiting for a recovery or an agreement

    # Sampling
    rss_interval_s: float = 1.0
    loadavg_interval_s: float = 5.0
    rss_warmup_s: float = 10.0  # imports and first allocations; the RSS windows start after this
    # The router's RSS in the last quarter of the run may be at most this factor above its
    # maximum in the first quarter after warm-up. Its state is bounded by design (the prefix tree
    # frees nodes unused for its statistics window, 1000 decisions kept, admission caps in-flight
    # work), so RSS moves by allocator and collector noise of a few percent, plus the tree
    # filling its window where the run outlasts it; a leak per request grows without bound.
    rss_growth_factor: float = 1.25
    examples_kept: int = 20  # lost, hung and undocumented-5xx requests listed in full in the report
