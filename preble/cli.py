"""The `preble` command line."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .bench.cli import bench_app
from .bench.workloads.trace import BLOCK
from .core.routing import DEFAULT_POLICY, POLICIES
from .core.sampling_params import SamplingParams
from .core.scheduler_config import SchedulerConfig
from .engine.config import LOAD_FORMATS, EngineConfig
from .launch_config import ServeConfig
from .router.config import RouterServerConfig
from .worker.config import WorkerConfig

POLICY_HELP = "Routing policy: " + " | ".join(POLICIES) + "."

# Plain help (rich_markup_mode=None): it wraps whole words at the terminal's width, where the rich
# panel squeezes help text into a narrow column.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Preble: LLM serving that co-optimises prefix reuse and load balance.")
console = Console()
app.add_typer(bench_app, name="bench")

DEMO_SYSTEM_PROMPT = (
    "You are a concise geography assistant. Answer each question in one short sentence. "
    "Name the place the user asks about and give the fact they want, nothing more. "
    "If a question has several answers, give the most common one."
)
DEMO_QUESTIONS = (
    "What is the capital of France?",
    "What is the capital of Italy?",
    "What is the capital of Japan?",
    "Which river flows through Paris?",
)


def engine_config(model: Path, load_format: str, device: str, dtype: str | None, page_size: int,
                  num_pages: int | None, kv_cache_gib: float | None, max_num_batched_tokens: int,
                  max_running_requests: int, max_model_len: int | None, local_policy: str, tp: int,
                  piecewise_graph_max_tokens: int):
    if load_format not in LOAD_FORMATS:
        raise typer.BadParameter(f"choose one of {', '.join(LOAD_FORMATS)}", param_hint="--load-format")
    return EngineConfig(
        model=str(model), load_format=load_format, device=device, dtype=dtype, page_size=page_size,
        num_pages=num_pages, kv_cache_gib=kv_cache_gib, tensor_parallel_size=tp,
        piecewise_graph_max_tokens=piecewise_graph_max_tokens,
        scheduler=SchedulerConfig(max_num_batched_tokens=max_num_batched_tokens,
                                  max_running_requests=max_running_requests,
                                  max_model_len=max_model_len, local_policy=local_policy))


@app.command()
def worker(
    model: Path = typer.Option(..., help="HF model folder."),
    load_format: str = typer.Option(EngineConfig.load_format, help="auto: the folder's *.safetensors | dummy: "
                                    "random weights for the folder's architecture (no weight files; see "
                                    "`preble random-model`)."),
    host: str = typer.Option(WorkerConfig.host, help="Interface to bind; loopback by default."),
    port: int = typer.Option(WorkerConfig.port),
    worker_id: str | None = typer.Option(WorkerConfig.worker_id, help="Name reported to routers; default host:port."),
    device: str = typer.Option(EngineConfig.device),
    dtype: str | None = typer.Option(EngineConfig.dtype),
    page_size: int = typer.Option(EngineConfig.page_size),
    num_pages: int | None = typer.Option(EngineConfig.num_pages),
    kv_cache_gib: float | None = typer.Option(EngineConfig.kv_cache_gib),
    max_num_batched_tokens: int = typer.Option(SchedulerConfig.max_num_batched_tokens),
    max_running_requests: int = typer.Option(SchedulerConfig.max_running_requests),
    max_model_len: int | None = typer.Option(SchedulerConfig.max_model_len),
    local_policy: str = typer.Option(SchedulerConfig.local_policy, help="fcfs | lpm | preble"),
    threads: int | None = typer.Option(WorkerConfig.num_threads,
                                       help="torch CPU threads for the engine (each rank's, with --tp)."),
    tp: int = typer.Option(EngineConfig.tensor_parallel_size, "--tp", min=1,
                           help="Tensor parallelism: ranks the model is split over (GPUs from --device's on, "
                                "or CPU processes)."),
    piecewise_graph_max_tokens: int = typer.Option(
        EngineConfig.piecewise_graph_max_tokens, min=0,
        help="CUDA: steps with prompt tokens up to this size replay piecewise CUDA graphs (e.g. 512; 0: eager)."),
    max_inflight: int = typer.Option(WorkerConfig.max_inflight, help="Requests admitted at once; beyond, 429."),
    api_key: str | None = typer.Option(WorkerConfig.api_key, envvar="PREBLE_WORKER_API_KEY",
                                       help="Require this key on every endpoint but /health."),
    log_json: bool = typer.Option(WorkerConfig.log_json, help="Log JSON lines."),
) -> None:
    """Serve one engine over HTTP (OpenAI, /generate, /load, /kv_events, /metrics)."""
    from .worker.server import run_worker

    cfg = engine_config(model, load_format, device, dtype, page_size, num_pages, kv_cache_gib,
                        max_num_batched_tokens, max_running_requests, max_model_len, local_policy, tp,
                        piecewise_graph_max_tokens)
    run_worker(WorkerConfig(engine=cfg, host=host, port=port, worker_id=worker_id, num_threads=threads,
                            max_inflight=max_inflight, api_key=api_key, log_json=log_json))


@app.command()
def router(
    model: Path = typer.Option(..., help="HF model folder (tokenizer, chat template, context window)."),
    worker: list[str] = typer.Option(..., "--worker", help="Worker base URL; repeat for each worker."),
    policy: str = typer.Option(RouterServerConfig.policy, help=POLICY_HELP),
    host: str = typer.Option(RouterServerConfig.host, help="Interface to bind; loopback by default."),
    port: int = typer.Option(RouterServerConfig.port),
    max_inflight: int = typer.Option(RouterServerConfig.max_inflight, help="Requests admitted at once; beyond, 429."),
    api_key: str | None = typer.Option(RouterServerConfig.api_key, envvar="PREBLE_API_KEY",
                                       help="Require this key from clients (Authorization: Bearer)."),
    worker_api_key: str | None = typer.Option(RouterServerConfig.worker_api_key, envvar="PREBLE_WORKER_API_KEY",
                                              help="The key the workers require."),
    dashboard_full_text: bool = typer.Option(RouterServerConfig.dashboard_full_text,
                                             help="Show whole prefixes on /dashboard, not a preview."),
    log_json: bool = typer.Option(RouterServerConfig.log_json, help="Log JSON lines."),
    worker_kind: str = typer.Option(RouterServerConfig.worker_kind, help="preble | openai | vllm | sglang: the "
                                    "workers are Preble workers, or OpenAI-compatible engines (tracked by what is "
                                    "routed to them)."),
    cost_model: Path | None = typer.Option(RouterServerConfig.cost_model, help="e2's cost model: a JSON from "
                                           "`preble profile` for the workers' device; default: built-in "
                                           "(Llama-3-8B on H100)."),
    health_timeout: float = typer.Option(RouterServerConfig.health_timeout_s, min=0.1, help="Seconds without an "
                                         "answer to the health check before a worker is routed around and requests "
                                         "stalled on it retried; raise it on hosts so loaded that live workers "
                                         "answer late."),
    kv_events: list[str] = typer.Option([], "--kv-events", help="With --worker-kind vllm: a worker's KV event "
                                        "endpoint (ZMQ, e.g. tcp://127.0.0.1:5557); one per --worker, in order."),
) -> None:
    """Front workers that run elsewhere with the global scheduler (dashboard at /dashboard)."""
    from .router.server import run_router

    if worker_kind not in ("preble", "openai", "vllm", "sglang"):
        raise typer.BadParameter(f"unknown worker kind {worker_kind!r}", param_hint="--worker-kind")
    if kv_events and (worker_kind != "vllm" or len(kv_events) != len(worker)):
        raise typer.BadParameter("needs --worker-kind vllm and one endpoint per --worker", param_hint="--kv-events")
    run_router(RouterServerConfig(model=str(model), workers=worker, policy=policy, host=host, port=port,
                                  max_inflight=max_inflight, api_key=api_key, worker_api_key=worker_api_key,
                                  dashboard_full_text=dashboard_full_text, log_json=log_json,
                                  worker_kind=worker_kind, kv_events=kv_events,
                                  cost_model=str(cost_model) if cost_model else None,
                                  health_timeout_s=health_timeout))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    model: Path | None = typer.Option(None, help="HF model folder; default: the embedded demo model."),
    workers: int = typer.Option(ServeConfig.workers, help="Workers: model replicas, each on --tp GPUs with "
                                                          "--device cuda."),
    tp: int = typer.Option(ServeConfig.tp, "--tp", min=1, help="Tensor parallelism: GPUs (or CPU processes) per "
                                                               "replica."),
    device: str = typer.Option(ServeConfig.device),
    policy: str = typer.Option(ServeConfig.policy, help=POLICY_HELP),
    host: str = typer.Option(ServeConfig.host, help="Router interface; loopback by default."),
    port: int = typer.Option(ServeConfig.port),
    max_inflight: int = typer.Option(ServeConfig.max_inflight, help="Requests the router admits at once; beyond, 429."),
    api_key: str | None = typer.Option(ServeConfig.api_key, envvar="PREBLE_API_KEY",
                                       help="Require this key from clients (Authorization: Bearer)."),
    log_json: bool = typer.Option(ServeConfig.log_json, help="Router and workers log JSON lines."),
    cost_model: Path | None = typer.Option(ServeConfig.cost_model, help="e2's cost model: a JSON from `preble "
                                           "profile` for the workers' device; default: built-in (Llama-3-8B on "
                                           "H100)."),
    ray: bool = typer.Option(ServeConfig.ray, "--ray", help="Place workers as Ray actors (each on --tp GPUs, or "
                                                            "a share of CPUs) across a Ray cluster."),
    ray_address: str | None = typer.Option(ServeConfig.ray_address, help="With --ray: the cluster's address "
                                           "(host:port); default: start a Ray instance here, on loopback."),
) -> None:
    """Start N workers and the router; Ctrl-C or SIGTERM stops them all, a crashed worker is
    restarted. Extra options go to each worker."""
    from .launch import NotEnoughGPUs, gpu_plan, visible_gpus
    from .launch import serve as run_serve
    from .models.demo import ensure_demo_model

    ray = ray or ray_address is not None
    try:
        if device == "cuda" and not ray:
            gpu_plan(workers, tp, visible_gpus())  # before anything starts
    except NotEnoughGPUs as err:
        console.print(f"[red]error:[/red] {err}", soft_wrap=True)
        raise typer.Exit(2) from None
    path = model or ensure_demo_model()
    run_serve(ServeConfig(model=str(path), workers=workers, tp=tp, device=device, policy=policy, host=host,
                          port=port, worker_args=list(ctx.args), max_inflight=max_inflight, api_key=api_key,
                          log_json=log_json, cost_model=str(cost_model) if cost_model else None,
                          ray=ray, ray_address=ray_address))


@app.command()
def profile(
    model: str = typer.Option("random:llama3-8b", help="HF folder or random:PRESET."),
    model_config: str | None = typer.Option(None, help="Preset name; same as --model random:NAME."),
    device: str = typer.Option("cuda"),
    dtype: str | None = typer.Option(None),
    grid: str = typer.Option("gpu", help="Measurement sizes: gpu | cpu | quick (a one-minute smoke run)."),
    out: Path = typer.Option(Path("cost_model.json"), help="Where the fitted model and its samples go."),
) -> None:
    """Time prefill and decode on this device and fit the router's and simulator's cost model."""
    import json

    from .bench.profile import GRIDS, ProfileConfig, run

    if grid not in GRIDS:
        raise typer.BadParameter(f"choose one of {sorted(GRIDS)}", param_hint="--grid")
    name = f"random:{model_config}" if model_config else model
    result = run(ProfileConfig(model=name, device=device, dtype=dtype, **GRIDS[grid]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    fit = result["fit"]
    console.print(f"cost model written to {out}; fit error prefill {fit['prefill']['mean_rel_error']:.1%} "
                  f"mean / {fit['prefill']['max_rel_error']:.1%} max, decode {fit['decode']['mean_rel_error']:.1%} "
                  f"mean / {fit['decode']['max_rel_error']:.1%} max")


@app.command()
def sim(
    ctx: typer.Context,
    workload: str = typer.Option("shared_prefix", help="A workload name (see preble.bench.workloads)."),
    trace: Path | None = typer.Option(None, help="A JSONL trace to replay instead of --workload: Mooncake-style "
                                                 "or token ids (docs/cli/sim.md); all of it unless --num-requests."),
    trace_block_size: int = typer.Option(BLOCK, min=1, help="Tokens per hash id of a Mooncake-style --trace."),
    replicas: int = typer.Option(4),
    policy: str = typer.Option(DEFAULT_POLICY, help=POLICY_HELP),
    rate: float | None = typer.Option(None, help="Poisson arrivals per second; default: the workload's own times."),
    num_requests: int = typer.Option(1000),
    cost_model: Path | None = typer.Option(None, help="A cost model JSON from `preble profile`; default: built-in."),
    tokenizer: Path | None = typer.Option(None, help="HF folder whose tokenizer turns text workloads into tokens."),
    num_pages: int = typer.Option(16384, help="KV pages per GPU."),
    tp: int = typer.Option(1, "--tp", min=1, help="GPUs per replica (tensor parallelism): the cost model is "
                                                   "split over them and the KV capacity multiplied."),
    page_size: int = typer.Option(16),
    param: list[str] = typer.Option([], help="Workload parameter key=value; repeatable."),
    seed: int = typer.Option(0),
    jsonl: Path | None = typer.Option(None, help="Write one record per request here."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Simulate a cluster: real local schedulers, caches and routing policy, cost-model time."""
    import json

    from .bench.cli import parse_param, trace_workload
    from .bench.loadgen import write_jsonl
    from .bench.requests import sim_request
    from .bench.workloads import make_workload, poisson_arrivals
    from .core.cost_model import CostModel
    from .sim.cluster import SimConfig, simulate
    from .sim.report import summarize

    tok = None
    if tokenizer is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer)
    if trace is not None:
        wl = trace_workload(ctx, trace, trace_block_size, num_requests, seed, tok)
        workload = wl.name
    else:
        wl = make_workload(workload, num_requests=num_requests, seed=seed, tokenizer=tok,
                           **dict(map(parse_param, param)))
    times = poisson_arrivals(len(wl.requests), rate, seed) if rate else [r.arrival for r in wl.requests]
    if tok is None and any(r.prompt_token_ids is None for r in wl.requests):
        raise typer.BadParameter(f"workload {workload!r} is text: give --tokenizer", param_hint="--tokenizer")
    reqs = [sim_request(r, arrival=t, tokenizer=tok) for r, t in zip(wl.requests, times)]
    model = CostModel.load(cost_model) if cost_model else CostModel()
    records = simulate(reqs, SimConfig(replicas=replicas, policy=policy, page_size=page_size, num_pages=num_pages,
                                       tensor_parallel=tp, seed=seed), model)
    if jsonl is not None:
        write_jsonl(records, jsonl)
    summary = {**summarize(records), "workload": workload, "policy": policy, "replicas": replicas, "rate": rate}
    if as_json:
        print(json.dumps(summary))
        return
    for key in ("mean_latency", "p50_latency", "p99_latency", "mean_ttft", "p99_ttft", "throughput", "hit_ratio"):
        console.print(f"{key:>14} {summary[key]:.4g}")
    console.print(f"{'branches':>14} {summary['branches']}")


@app.command("demo-model")
def demo_model(cache_dir: Path | None = typer.Option(None, help="Where converted models live.")) -> None:
    """Convert the embedded demo model (SmolLM2-135M-Instruct) once; print its folder."""
    from .models.demo import ensure_demo_model

    print(ensure_demo_model(cache_dir))


@app.command("random-model")
def random_model(
    out: Path = typer.Option(..., help="The folder to write."),
    preset: str = typer.Option("llama3-8b", help="Architecture: a preset of random:NAME models (an unknown "
                               "name lists them)."),
    seed: int = typer.Option(0, help="Seed of the tokenizer's synthetic vocabulary (the weights are drawn from "
                             "the engine's seed when a worker loads the folder)."),
) -> None:
    """Write a model folder without weights (config.json, tokenizer) for a random:NAME architecture,
    for workers and `preble serve` with --load-format dummy."""
    from .models.config import UnsupportedModel
    from .models.random_folder import write_random_model_folder

    try:
        path = write_random_model_folder(out, preset, seed)
    except UnsupportedModel as err:
        raise typer.BadParameter(str(err), param_hint="--preset") from None
    print(path)
    console.print(f"serve it with random weights: preble serve --model {path} --load-format dummy", soft_wrap=True)


@app.command()
def demo(
    out: Path = typer.Option(Path("preble-demo.png"), help="Where the comparison plot goes."),
    requests: int = typer.Option(96, help="Requests per policy."),
    rate: float = typer.Option(1.6, help="Poisson arrivals per second."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the summaries here (with commit and date)."),
) -> None:
    """The showcase: a 2-worker cluster of the demo model serves a shared-prefix workload under
    the default policy and under round_robin; prints the comparison and writes a plot."""
    import json
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .bench.demo import DemoConfig, document, plot, run_policy, summary, summary_table
    from .models.demo import ensure_demo_model

    cfg = DemoConfig(num_requests=requests, rate=rate)
    start = time.monotonic()
    with console.status("preparing the demo model (converted once, then cached)"):
        model = str(ensure_demo_model())
    console.print(f"{cfg.workers} workers x {cfg.num_pages} KV pages of {cfg.page_size} tokens; "
                  f"{cfg.num_requests} requests at {cfg.rate}/s in {cfg.params['groups']} groups sharing "
                  f"{cfg.params['system_len']}-token prefixes")
    results = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        for policy in cfg.policies:
            task = progress.add_task(f"{policy}: starting the cluster", total=cfg.num_requests)

            def done(_, task=task, policy=policy):
                progress.update(task, advance=1, description=f"{policy}: serving")

            results[policy] = run_policy(model, policy, cfg, on_done=done)
            progress.update(task, description=f"{policy}: done")
    sums = {p: summary(r) for p, r in results.items()}
    console.print(summary_table(sums))
    if len(sums) == 2:
        (a, sa), (b, sb) = sums.items()
        console.print(f"{a} vs {b}: {sb['mean_latency'] / sa['mean_latency']:.2f}x lower mean latency, "
                      f"{sb['p99_latency'] / sa['p99_latency']:.2f}x lower p99")
    console.print(f"plot written to {plot(results, out)}")
    if json_out is not None:
        json_out.write_text(json.dumps(document(cfg, sums, time.monotonic() - start), indent=1) + "\n")
        console.print(f"summaries written to {json_out}")


@app.command()
def chat(
    model: Path | None = typer.Option(None, help="HF model folder; default: the embedded demo model."),
    device: str = typer.Option(EngineConfig.device, help="cpu or cuda"),
    max_tokens: int = typer.Option(32, help="Tokens to generate per answer."),
) -> None:
    """One engine in-process: chat questions that share a system prompt, showing prefix-cache reuse."""
    from . import LLM
    from .models.demo import ensure_demo_model

    with console.status("preparing the demo model (converted once, then cached)"):
        path = model or ensure_demo_model()
    with console.status(f"loading {path.name} on {device}"):
        llm = LLM(str(path), device=device)
    chats = [[{"role": "system", "content": DEMO_SYSTEM_PROMPT}, {"role": "user", "content": q}]
             for q in DEMO_QUESTIONS]
    prompts = [llm.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True,
                                                 return_dict=False) for c in chats]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    table = Table(title="Preble engine demo: greedy chat answers")
    for col in ("question", "answer", "prompt tokens", "cached", "seconds"):
        table.add_column(col)
    # The first request warms the cache; the rest share its system prompt and reuse its KV.
    for batch in (prompts[:1], prompts[1:]):
        start = time.perf_counter()
        outs = llm.generate(batch, params)
        elapsed = time.perf_counter() - start
        for out in outs:
            question = DEMO_QUESTIONS[prompts.index(out.prompt_token_ids)]
            table.add_row(question, out.outputs[0].text.strip(), str(len(out.prompt_token_ids)),
                          str(out.num_cached_tokens), f"{elapsed:.2f}")
    console.print(table)
    stats = llm.engine.cache.stats
    console.print(f"prefix cache: {stats.hit_tokens} of {stats.query_tokens} prompt tokens reused "
                  f"({stats.hit_ratio:.0%})")


@app.command()
def generate(
    model: Path = typer.Option(..., help="HF model folder."),
    prompt: list[str] = typer.Argument(..., help="Prompts (plain text, no chat template)."),
    device: str = typer.Option(EngineConfig.device),
    max_tokens: int = typer.Option(64),
    temperature: float = typer.Option(0.0),
    top_p: float = typer.Option(SamplingParams.top_p),
    seed: int | None = typer.Option(SamplingParams.seed),
) -> None:
    """Offline generation for a few prompts."""
    from . import LLM

    llm = LLM(str(model), device=device)
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    for out in llm.generate(prompt, params):
        console.print(f"[bold]{out.prompt}[/bold]{out.outputs[0].text}")


if __name__ == "__main__":
    app()
