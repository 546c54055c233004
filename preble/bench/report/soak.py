"""`preble bench soak` figures (`results/soak/`): the README's account of a run, from its JSON."""

from __future__ import annotations

from collections import Counter

from .fmt import prose, ratio
from .results import Result
from .traced import measured_code


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _after(events: list[dict], action: str, key: str) -> list[float]:
    """Seconds from each `action` event to its `key` moment (where it was seen)."""
    return [e[key] - e["at_s"] for e in events if e["action"] == action and e[key] is not None]


def _seconds(xs: list[float]) -> str:
    return f"{_mean(xs):.1f} s on average" if xs else "never"


def summary(run: Result) -> str:
    """What the run sent and what came of it, the chaos, the router's memory and the host's load,
    then each check."""
    d = run.data
    cfg, out, load, rss = d["config"], d["outcomes"], d["load"], d["rss_mb"]
    kinds = Counter(e["action"] for e in d["chaos"])
    recoveries = {a: _after(d["chaos"], a, "recovered_s") for a in kinds}
    noticed = {a: _after(d["chaos"], a, "down_seen_s") for a in kinds}
    compared = sum(len(e["kv"]) for e in d["chaos"])
    agreed = sum(k["ok"] for e in d["chaos"] for k in e["kv"])
    one_min = [x[1] for x in d["loadavg"]]
    text = prose(
        f"`{run.path}` (commit {measured_code(run)}, {d['date'][:10]}, {d['device']['cpus']} cores): "
        f"{cfg['workers']} workers and the router under {cfg['rate']:g} requests/s offered for "
        f"{cfg['duration_s']:.0f} s. {out['sent']} requests sent: {out['completed']} completed, {out['errored']} "
        f"errored with a message, {out['cancelled']} cancelled by their clients, {out['lost']} lost, {out['hung']} "
        f"hung, {out['undocumented_5xx']} undocumented 5xx. {len(d['chaos'])} chaos events: {kinds['kill']} kills "
        f"(the router showed the worker down {_seconds(noticed.get('kill', []))} after the kill, and it was back, "
        f"healthy and followed, {_seconds(recoveries.get('kill', []))} after) and {kinds['stop']} stops of "
        f"{cfg['stop_s']:g} s (down {_seconds(noticed.get('stop', []))} after the stop began, back "
        f"{_seconds(recoveries.get('stop', []))} after); after each, with the cluster idle ({load['held_for_kv_checks_s']:.1f} s of holds in all), "
        f"{agreed} of {compared} comparisons of a worker's cache with the router's picture of it agreed. The "
        f"router's RSS peaked at {rss['first_quarter_max']:.1f} MB in the first quarter after warm-up and "
        f"{rss['last_quarter_max']:.1f} MB in the last ({ratio(rss['last_quarter_max'] / rss['first_quarter_max'], 3)}). "
        f"The host's 1-minute load average was {_mean(one_min):.1f} on average and {max(one_min):.1f} at most, "
        f"on {d['device']['cpus']} cores shared by the cluster, the clients and any other process.")
    rows = ["| check | passed | detail |", "|---|---|---|",
            *(f"| {c['name']} | {'yes' if c['ok'] else 'no'} | {c['detail']} |" for c in d["checks"])]
    return text + "\n\n" + "\n".join(rows)
