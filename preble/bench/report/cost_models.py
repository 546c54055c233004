"""Cost-model figures (`preble profile`, `results/cost_models/`): the fitted terms and the fit's
errors, for the index in `results/README.md`."""

from __future__ import annotations

from .fmt import prose
from .results import Result

MS = 1e3
US = 1e6


def _model(result: Result) -> str:
    """The profiled model as its description names it (`fitted by preble profile: MODEL on DEVICE`)."""
    description = result.data["cost_model"]["description"].split(": ", 1)[-1]
    return description.rsplit(" on ", 1)[0].rsplit("/", 1)[-1]


def table(*results: Result) -> str:
    """Per cost model: the device and model, the fixed and per-token prefill terms, the fixed decode
    step, and the fit's mean / max relative error on prefill and decode."""
    lines = ["| file | device | model | prefill a (ms) + b (us/token) | decode step d (ms) | prefill fit error, "
             "mean / max | decode fit error, mean / max |", "|---|---|---|---|---:|---|---|"]
    for r in results:
        m, fit = r.data["cost_model"], r.data["fit"]
        lines.append(f"| `{r.name}` | {r.data['meta']['device']} | {_model(r)} | {m['prefill']['a'] * MS:.1f} + "
                     f"{m['prefill']['b'] * US:.1f} | {m['decode']['d'] * MS:.1f} | "
                     f"{fit['prefill']['mean_rel_error']:.1%} / {fit['prefill']['max_rel_error']:.1%} | "
                     f"{fit['decode']['mean_rel_error']:.1%} / {fit['decode']['max_rel_error']:.1%} |")
    return "\n".join(lines)


def against(base: Result, other: Result) -> str:
    """How one device's decode step and prefill per token compare with another's, same model."""
    d = other.data["cost_model"]["decode"]["d"] / base.data["cost_model"]["decode"]["d"]
    b = other.data["cost_model"]["prefill"]["b"] / base.data["cost_model"]["prefill"]["b"]
    return prose(f"On the {other.data['meta']['device']} the fitted decode step of {_model(other)} is {1 - d:.0%} "
                 f"cheaper than on the {base.data['meta']['device']} (d {other.data['cost_model']['decode']['d'] * MS:.1f} "
                 f"vs {base.data['cost_model']['decode']['d'] * MS:.1f} ms) and prefill per token {b:.2f}x "
                 f"(`{other.name}` against `{base.name}`).")
