"""The constraint-aware view of a study: Pareto fronts against each MCU's SRAM / flash
budget, per-layer pruning ratios and costs of the front, hypervolume over trials, and a
sortable table, in one self-contained HTML file (plotly's JS embedded, works offline).

Everything is read from the study storage (a :class:`SearchResult`), never from a copy.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

from .io import atomic_write_text
from .search.metrics import COST_METRICS, is_maximized
from .search.pareto import hypervolume
from .search.result import SearchResult

CATEGORIES = {  # category -> (marker symbol, color)
    "Pareto front": ("star", "#d62728"),
    "feasible": ("circle", "#1f77b4"),
    "infeasible (trained)": ("diamond-open", "#ff7f0e"),
    "rejected before training": ("x", "#7f7f7f"),
    "stopped early": ("triangle-down-open", "#9467bd"),
}
LABELS = {"latency_ms": "latency (ms)", "peak_ram_bytes": "peak RAM (bytes)",
          "flash_bytes": "flash (bytes)", "energy_uj": "energy (uJ)", "macs": "MACs",
          "params": "parameters", "accuracy": "test accuracy"}


def _category(row, front: set) -> str | None:
    if row["state"] == "PRUNED":
        return "stopped early"
    if row["state"] != "COMPLETE":
        return None
    if not row["trained"]:
        return "rejected before training"
    if row["number"] in front:
        return "Pareto front"
    return "feasible" if row["_feasible_here"] else "infeasible (trained)"


def _config_text(row) -> str:
    parts = [f"{c[7:]}={row[c]}" for c in row.index
             if c.startswith("params_") and "ratio." not in c and not _isnan(row[c])]
    return "<br>".join(parts)


def _isnan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def plot_pareto(result: SearchResult, x: str = "latency_ms", y: str = "accuracy",
                profile: str | None = None):
    """A plotly scatter of every trial on ``profile`` (default: the first chosen MCU): the
    front, feasible, infeasible, rejected-before-training and early-stopped trials apart,
    with the MCU's SRAM / flash limit drawn where an axis is RAM or flash. Hover shows the
    trial number and its configuration."""
    import plotly.graph_objects as go
    p = profile or result.profiles[0]
    df = result.trials
    df["_feasible_here"] = df.get(f"feasible@{p}", df["feasible"])
    front = set(result.pareto_for(p)["number"])
    col = {m: (f"{m}@{p}" if m in COST_METRICS else m) for m in (x, y)}
    fig = go.Figure()
    for cat, (symbol, color) in CATEGORIES.items():
        rows = [r for _, r in df.iterrows() if _category(r, front) == cat]
        if not rows:
            continue
        xs = [r[col[x]] for r in rows]
        # untrained trials have no accuracy: they sit on the axis, marked apart
        ys = [0.0 if (_isnan(r[col[y]]) and y == "accuracy") else r[col[y]] for r in rows]
        text = [f"trial {int(r['number'])} ({cat})<br>{_config_text(r)}"
                + (f"<br>violates: {r['violations']}" if r["violations"] else "") for r in rows]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"{cat} ({len(rows)})",
                                 marker=dict(symbol=symbol, color=color, size=9 if
                                             cat == "Pareto front" else 7),
                                 text=text, customdata=[int(r["number"]) for r in rows],
                                 hovertemplate="%{text}<br>" + f"{x}=%{{x:.4g}}<br>"
                                 f"{y}=%{{y:.4g}}<extra></extra>"))
    budget = result.budgets.get(p, {})
    for axis, metric in (("x", x), ("y", y)):
        limit = {"peak_ram_bytes": budget.get("sram_bytes"),
                 "flash_bytes": budget.get("flash_bytes")}.get(metric)
        if limit:
            kw = dict(line_dash="dash", line_color="#d62728",
                      annotation_text=f"{p} {'SRAM' if metric == 'peak_ram_bytes' else 'flash'}"
                      f" {limit / 1024:.0f} KiB")
            (fig.add_vline if axis == "x" else fig.add_hline)(limit, **kw)
    fig.update_layout(title=f"{LABELS.get(y, y)} vs {LABELS.get(x, x)} on {p}",
                      xaxis_title=LABELS.get(x, x), yaxis_title=LABELS.get(y, y),
                      template="plotly_white", height=420, legend=dict(font=dict(size=10)))
    return fig


def hypervolume_history(result: SearchResult) -> tuple[list[int], list[float]]:
    """Hypervolume of the feasible front after each trial, on objectives scaled to [0, 1]
    by the range of all trained trials (reference: 0 accuracy, 1.1 x the largest cost)."""
    df = result.trials.sort_values("number")
    objs = result.objectives
    ok = df[df["trained"] & (df["state"] == "COMPLETE")]
    if ok.empty:
        return [], []
    lo = ok[objs].min().to_numpy(float)
    hi = ok[objs].max().to_numpy(float)
    span = np.where(hi > lo, hi - lo, 1.0)
    maximize = [is_maximized(o) for o in objs]
    ref = [0.0 if m else 1.1 for m in maximize]
    numbers, values = [], []
    for n in df["number"]:
        sub = ok[(ok["number"] <= n) & ok["feasible"]]
        v = (sub[objs].to_numpy(float) - lo) / span if len(sub) else np.zeros((0, len(objs)))
        if len(sub):
            v[:, maximize] = (sub[objs].to_numpy(float)[:, maximize] - 0.0) / np.maximum(
                hi[maximize], 1e-12)  # accuracy keeps its own scale, 0 at the reference
        numbers.append(int(n))
        values.append(hypervolume(v, maximize, ref) if len(sub) else 0.0)
    return numbers, values


def _ratio_heatmap(result: SearchResult, front_numbers: list[int]):
    import plotly.graph_objects as go
    trials = {t.number: t for t in result.study.get_trials(deepcopy=False)}
    ratios = {n: trials[n].user_attrs.get("achieved_ratios", {}) for n in front_numbers}
    layers = list(dict.fromkeys(k for r in ratios.values() for k in r))
    if not layers:
        return None
    z = [[ratios[n].get(layer, None) for layer in layers] for n in front_numbers]
    fig = go.Figure(go.Heatmap(z=z, x=layers, y=[f"trial {n}" for n in front_numbers],
                               colorscale="Blues", zmin=0, zmax=1,
                               colorbar=dict(title="pruned"),
                               hovertemplate="%{y}, layer %{x}: %{z:.2f}<extra></extra>"))
    fig.update_layout(title="Per-layer pruning ratio of the front members (channels removed "
                      "or weights zeroed)", template="plotly_white",
                      height=160 + 28 * len(front_numbers), xaxis_title="layer")
    return fig


def _layer_breakdown(result: SearchResult, profile: str, front_numbers: list[int]):
    """Per-layer latency and output-tensor bytes of one front member, chosen in a dropdown."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    trials = {t.number: t for t in result.study.get_trials(deepcopy=False)}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("latency per layer (ms)",
                                                        "output tensor per layer (bytes)"))
    shown = []
    for i, n in enumerate(front_numbers):
        rows = trials[n].user_attrs.get("layer_costs", {}).get(profile)
        if not rows:
            continue
        names = [f"{r[0]} ({r[1]})" for r in rows]
        vis = not shown
        fig.add_trace(go.Bar(x=names, y=[r[2] for r in rows], name=f"trial {n}", visible=vis,
                             marker_color="#1f77b4"), row=1, col=1)
        fig.add_trace(go.Bar(x=names, y=[r[3] for r in rows], name=f"trial {n}", visible=vis,
                             marker_color="#ff7f0e"), row=1, col=2)
        shown.append(n)
    if not shown:
        return None
    buttons = [dict(label=f"trial {n}", method="update",
                    args=[{"visible": [j // 2 == i for j in range(2 * len(shown))]}])
               for i, n in enumerate(shown)]
    fig.update_layout(updatemenus=[dict(buttons=buttons, x=1.0, y=1.3, xanchor="right")],
                      title=f"Cost model breakdown on {profile} (choose a front member)",
                      template="plotly_white", height=440, showlegend=False,
                      margin=dict(t=110))
    return fig


def _front_table(result: SearchResult, profile: str) -> str:
    table = result.front_table(profile)
    if table.empty:
        return "<p>No feasible trained trial.</p>"
    head = "".join(f"<th onclick='sortTable(this)'>{html.escape(str(c))}</th>" for c in table.columns)
    body = []
    for _, row in table.iterrows():
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(f"<td data-v='{v}'>{'' if math.isnan(v) else f'{v:.4g}'}</td>")
            else:
                cells.append(f"<td data-v='{html.escape(str(v))}'>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<table class='front'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}"
            "</tbody></table>")


_SORT_JS = """
function sortTable(th) {
  const table = th.closest('table'), body = table.tBodies[0];
  const i = Array.from(th.parentNode.children).indexOf(th);
  const asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
  const key = r => { const v = r.children[i].dataset.v; const f = parseFloat(v);
                     return isNaN(f) ? v : f; };
  Array.from(body.rows).sort((a, b) => (key(a) > key(b) ? 1 : -1) * (asc ? 1 : -1))
       .forEach(r => body.appendChild(r));
}
"""


def build_report(result: SearchResult) -> str:
    """The report as one HTML string."""
    import plotly.graph_objects as go
    from plotly.offline import get_plotlyjs
    result = result.snapshot()  # one read of the storage for every plot and table
    sections = []

    def add(fig):
        if fig is not None:
            sections.append(fig.to_html(full_html=False, include_plotlyjs=False))

    trials = result.trials
    n_rejected = int(((trials["state"] == "COMPLETE") & ~trials["trained"]).sum())
    summary = (f"{len(trials)} trials: {int(trials['feasible'].sum())} feasible on every MCU, "
               f"{n_rejected} rejected by the cost gate before training, "
               f"{int((trials['state'] == 'PRUNED').sum())} stopped early, "
               f"{int((trials['state'] == 'FAIL').sum())} failed.")
    for p in result.profiles:
        sections.append(f"<h2>{html.escape(p)}</h2>")
        for x in ("latency_ms", "peak_ram_bytes", "flash_bytes"):
            add(plot_pareto(result, x=x, y="accuracy", profile=p))
        front = list(result.pareto_for(p)["number"])
        sections.append(f"<h3>Front on {html.escape(p)}</h3>" + _front_table(result, p))
        add(_layer_breakdown(result, p, front))
    front_all = list(result.pareto["number"])
    add(_ratio_heatmap(result, front_all))
    numbers, hv = hypervolume_history(result)
    if numbers:
        fig = go.Figure(go.Scatter(x=numbers, y=hv, mode="lines+markers"))
        fig.update_layout(title="Hypervolume of the feasible front over trials (objectives "
                          f"{', '.join(result.objectives)}, scaled)", xaxis_title="trial",
                          yaxis_title="hypervolume", template="plotly_white", height=360)
        add(fig)
    meta = json.dumps({"study": result.name, "profiles": result.profiles,
                       "objectives": result.objectives})
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>searchprune report: {html.escape(result.name)}</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<script type="text/javascript">{_SORT_JS}</script>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1400px}}
table.front{{border-collapse:collapse;font-size:12px}} table.front td,table.front th{{border:1px
solid #ccc;padding:2px 6px}} table.front th{{cursor:pointer;background:#f3f3f3}}</style>
</head><body data-study='{html.escape(meta)}'>
<h1>searchprune study <code>{html.escape(result.name)}</code></h1>
<p>{summary} Objectives: {html.escape(', '.join(result.objectives))}. Trials rejected by the
cost gate were never trained: they sit at accuracy 0, marked apart. Dashed lines are the MCU's
SRAM and flash.</p>
{''.join(sections)}
</body></html>"""


def write_report(result: SearchResult, path: str | Path) -> Path:
    """Write the report atomically (a crash never leaves half a file)."""
    return atomic_write_text(path, build_report(result))
