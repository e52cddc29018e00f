"""`python -m studio report`: the paper's tables for a workspace, as Markdown with what produced them."""
from __future__ import annotations

from pathlib import Path

from ..workspace import Workspace, atomic_write_bytes
from . import tables


def report_markdown(ws: Workspace, eval_run: int | None = None) -> str:
    """Table 1 (dataset before/after curation, and per split), Table 2 (an evaluation run), Table 3 (human scores)."""
    from .evaluate import latest_result, settings_markdown, table_markdown
    from ..human.studies import results, table3_markdown
    from ..dataset.stats import TABLE1_ROWS, dataset_stats, format_table1

    stats = dataset_stats(ws)
    parts = [f"# CrossFaceID Studio report: {ws.root.name}", "",
             "## Table 1: dataset statistics", "", format_table1(stats), ""]
    rules = stats.get("rules")
    if rules:
        parts += [f"Curation rules: {rules}", ""]
    if stats["table1_by_split"]:
        splits = list(stats["table1_by_split"])
        parts += ["Kept images per person split:", "", "| | " + " | ".join(splits) + " |",
                  "|---|" + "---:|" * len(splits)]
        for key, label in TABLE1_ROWS:
            parts.append(f"| {label} | " + " | ".join(str(stats["table1_by_split"][s][key]) for s in splits) + " |")
        parts.append("")
    parts += ["## Table 2: automatic evaluation", ""]
    run = latest_result(ws, eval_run)
    if run is None or not run.get("result"):
        parts += ["No finished evaluation run in this workspace (`python -m studio evaluate`).", ""]
    else:
        res = run["result"]
        parts += [settings_markdown(run["settings"], res["scorer"], run["id"]) + f" By {run['author']}, "
                  f"finished {run['ended_at']}.", "", tables.markdown(tables.table2(res["table"], res.get("against"))), "",
                  "### The studio's own measures", "",
                  "Not defined by the paper: 95% bootstrap intervals, Δ against the run's baseline, Face Sim on "
                  "customization sets, attribute accuracy and samples without a face.", "",
                  table_markdown(res["table"], res["baseline"])]
        if res.get("tradeoff"):
            parts += ["λ trade-off (accuracy on the attributes other than pose vs Face Sim):", "", "| model | λ | attribute acc. | Face Sim |",
                      "|---|---:|---:|---:|"]
            parts += [f"| {p['model']} | {p['lambda']:g} | {p['attribute_accuracy']:.3f} | "
                      f"{'–' if p['face_sim'] is None else format(p['face_sim'], '.3f')} |" for p in res["tradeoff"]]
            parts.append("")
    parts += ["## Table 3: human evaluation", ""]
    studies = [s for s in ws.store.studies() if s["done"]]
    if not studies:
        parts += ["No human evaluation scores in this workspace yet.", ""]
    for s in studies:
        res = results(ws, s["name"])
        parts += [tables.markdown(tables.table3(res["table3"], s["name"])), "", "### The studio's own measures", "",
                  table3_markdown(res) + f" Created by {s['created_by']} from {s['source']}, {s['per_item']} "
                  "annotators per item; scores 0-5.", ""]
    return "\n".join(parts)


def write_report(ws: Workspace, out: Path | None = None, eval_run: int | None = None) -> Path:
    text = report_markdown(ws, eval_run)
    out = Path(out) if out else ws.root / "exports" / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, text.encode("utf-8"))
    return out
