"""Tables 2 and 3 as the paper lays them out, in Markdown, CSV and LaTeX (``booktabs``).

Table 2 (§5.2): a column group per test set with the paper's measures for its kind (a
customization set: CLIP-T and CLIP-I; a fidelity set: Face Sim, CLIP-T and CLIP-I), one row per
model, a fine-tuned model's gain over the model it started from in brackets ("0.300 (+0.060)"),
and the best value of each column in bold. Table 3 (§5.3): one row per model, Min / Max / Avg of the
0-5 scores per criterion. What the paper does not define (intervals, attribute accuracy, Face Sim
on customization sets, missing faces; std, n and agreement of the scores) stays in the studio's
own tables, printed apart from these.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from ..codes import SCALES

#: the paper's measures per test-set kind, in its column order
PAPER_COLUMNS = {"customization": ("clip_t", "clip_i"), "fidelity": ("face_sim", "clip_t", "clip_i")}
LABELS = {"clip_t": "CLIP-T", "clip_i": "CLIP-I", "face_sim": "Face Sim", "min": "Min", "max": "Max", "avg": "Avg"}


@dataclass
class Cell:
    value: float | None
    delta: float | None = None  # a fine-tuned model's gain over its starting model
    best: bool = False
    digits: int = 3

    def text(self) -> str:
        if self.value is None:
            return "–"
        out = f"{self.value:.{self.digits}f}" if isinstance(self.value, float) else str(self.value)
        return out + (f" ({self.delta:+.{self.digits}f})" if self.delta is not None else "")


@dataclass
class PaperTable:
    """A table with grouped columns: ``groups`` is [(group title, [column labels])], a row is (label, cells)."""

    title: str
    groups: list[tuple[str, list[str]]]
    rows: list[tuple[str, list[Cell]]] = field(default_factory=list)
    note: str = ""


def _bold_best(rows: list[tuple[str, list[Cell]]], columns=None) -> None:
    """Mark the highest value of each of ``columns`` (default: every column), where two or more rows have one."""
    if not rows:
        return
    for j in columns if columns is not None else range(len(rows[0][1])):
        values = [cells[j].value for _, cells in rows if cells[j].value is not None]
        if len(values) > 1:
            best = max(values)
            for _, cells in rows:
                cells[j].best = cells[j].value == best


def table2(table: list[dict], against: dict[str, str] | None = None) -> PaperTable:
    """Table 2 from an evaluation run's rows (``evaluate.summarize``). ``against``: model -> the model it was
    fine-tuned from; only those rows carry a bracket, and only when that model is in the run."""
    against = against or {}
    sets = list(dict.fromkeys((r["testset"], r["kind"]) for r in table))
    lambdas = {r["lambda"] for r in table}
    keys = list(dict.fromkeys((r["model"], r["lambda"]) for r in table))
    by = {(r["testset"], r["model"], r["lambda"]): r for r in table}
    t = PaperTable("Table 2: automatic evaluation",
                   [(name, [LABELS[m] for m in PAPER_COLUMNS.get(kind, ())]) for name, kind in sets],
                   note="Fine-tuned models: in brackets the gain over the model they started from, paired on the "
                        "same items and seeds. Bold: the best of each column.")
    for model, lam in keys:
        cells = []
        for name, kind in sets:
            r = by.get((name, model, lam), {})
            fine_tuned = model in against and r.get("d_against") == against[model]
            for m in PAPER_COLUMNS.get(kind, ()):
                cells.append(Cell(r.get(m), r.get(f"d_{m}") if fine_tuned else None))
        t.rows.append((model if len(lambdas) == 1 else f"{model} (λ {lam:g})", cells))
    _bold_best(t.rows)
    return t


def table3(rows: list[dict], study: str = "") -> PaperTable:
    """Table 3 from a study's per-model, per-criterion rows (``human.studies.table3``)."""
    criteria = [s.name for s in SCALES]
    t = PaperTable(f"Table 3: human evaluation{f' ({study})' if study else ''}",
                   [(c.capitalize(), ["Min", "Max", "Avg"]) for c in criteria],
                   note="Scores 0-5; Min, Max and Avg over every score a model's samples received.")
    by = {(r["model"], r["criterion"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = []
        for c in criteria:
            r = by.get((model, c))
            cells += [Cell(r["min"] if r else None, digits=0), Cell(r["max"] if r else None, digits=0),
                      Cell(float(r["avg"]) if r else None, digits=2)]
        t.rows.append((model, cells))
    _bold_best(t.rows, range(2, len(t.groups) * 3, 3))  # the best average per criterion
    return t


def markdown(t: PaperTable) -> str:
    heads = [f"{g} {c}" for g, cols in t.groups for c in cols]
    lines = [f"**{t.title}**", "", "| model | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for label, cells in t.rows:
        lines.append(f"| {label} | " + " | ".join(f"**{c.text()}**" if c.best else c.text() for c in cells) + " |")
    return "\n".join(lines + ([f"\n{t.note}"] if t.note else []))


def csv_text(t: PaperTable) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model"] + [f"{g} {c}" for g, cols in t.groups for c in cols])
    for label, cells in t.rows:
        w.writerow([label] + ["" if c.value is None else c.text() for c in cells])
    return buf.getvalue()


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"), ("_", r"\_"),
                 ("{", r"\{"), ("}", r"\}"), ("λ", r"$\lambda$"), ("–", "--")):
        text = text.replace(a, b)
    return text


def latex(t: PaperTable) -> str:
    """A ``booktabs`` tabular (needs ``\\usepackage{booktabs}``) with a column group per test set or criterion."""
    spec = "l" + "".join("c" * len(cols) for _, cols in t.groups)
    lines = [f"% {t.title}. {t.note}", r"\begin{tabular}{" + spec + "}", r"\toprule"]
    lines.append(" & ".join([""] + [rf"\multicolumn{{{len(cols)}}}{{c}}{{{_tex(g)}}}" for g, cols in t.groups])
                 + r" \\")
    col, rules = 2, []
    for _, cols in t.groups:
        rules.append(rf"\cmidrule(lr){{{col}-{col + len(cols) - 1}}}")
        col += len(cols)
    lines.append(" ".join(rules))
    lines.append(" & ".join(["Model"] + [_tex(c) for _, cols in t.groups for c in cols]) + r" \\")
    lines.append(r"\midrule")
    for label, cells in t.rows:
        texts = [rf"\textbf{{{_tex(c.text())}}}" if c.best else _tex(c.text()) for c in cells]
        lines.append(" & ".join([_tex(label)] + texts) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)
