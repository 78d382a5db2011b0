"""The report's static HTML page, ``results/<study>/report.html``.

The page is one file that opens offline: figures are relative links to ``report/<stem>.png`` (the PDF is
linked beside each), tables are inline, nothing is fetched from the network and no script runs. The text
depends on the records only (plus the environment section, which says where it was read), so regenerating it
gives the same bytes.
"""

from __future__ import annotations

import html
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from suite import records
from suite.environment import version
from suite.names import ENVIRONMENT, HTML_PAGE, STATUS
from suite.report.content import Figure, Table
from suite.report.figures import published_rows
from suite.report.load import StudyRecords, fmt_value
from suite.report.tables import write_text


@dataclass(frozen=True)
class Page:
    """Everything the HTML page shows, already formatted."""

    title: str
    description: str
    summary: Mapping[str, str]
    tables: Sequence[Table]
    figures: Sequence[Figure]
    notes: Sequence[str] = ()
    study_yaml: str = ""
    environment: Mapping[str, str] = field(default_factory=dict)
    environment_source: str = ""


_CSS = """
body { font-family: DejaVu Sans, Arial, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th { background: #eee; } .text, .kv td { text-align: left; }
figure { margin: 1em 0 2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; max-width: 900px; }
pre { background: #f6f6f6; padding: 0.8em; font-size: 0.8em; overflow-x: auto; }
.note { font-size: 0.85em; color: #555; } .skipped { color: #8a5a00; }
""".strip()


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def table_html(table: Table) -> str:
    """A table as HTML, its notes as small paragraphs under it."""
    def cell(tag: str, i: int, text: str) -> str:
        return f'<{tag} class="text">{_e(text)}</{tag}>' if i < table.labels else f"<{tag}>{_e(text)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(table.headers))
    body = "\n".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in table.rows)
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in table.notes)
    return f"<h3>{_e(table.title)}</h3>\n<table>\n<tr>{head}</tr>\n{body}\n</table>\n{notes}"


def figure_html(fig: Figure, base: Path) -> str:
    """A written figure as an image with links (paths relative to ``base``), a skipped one as a note."""
    if fig.skipped is not None or not fig.paths:
        return f'<p class="skipped"><b>{_e(fig.title)}</b>: skipped: {_e(fig.skipped or "no data")}</p>'
    png = next((p for p in fig.paths if p.suffix == ".png"), fig.paths[0])
    links = " ".join(f'<a href="{_e(p.relative_to(base).as_posix())}">{_e(p.suffix[1:].upper())}</a>'
                     for p in fig.paths)
    src = _e(png.relative_to(base).as_posix())
    return (f'<figure id="{_e(fig.stem)}">\n<img src="{src}" alt="{_e(fig.title)}">\n'
            f"<figcaption><b>{_e(fig.title)}.</b> {_e(fig.caption)} [{links}]</figcaption>\n</figure>")


def render(page: Page, base: Path) -> str:
    """The whole page; figure links are relative to ``base`` (the directory holding the page)."""
    summary = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in page.summary.items())
    env = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in page.environment.items())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">\n<head>\n<meta charset="utf-8">',
        f"<title>{_e(page.title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>",
        f"<h1>{_e(page.title)}</h1>",
        f"<p>{_e(page.description)}</p>" if page.description else "",
        f'<table class="kv">\n{summary}\n</table>',
        "".join(f'<p class="note">{_e(n)}</p>' for n in page.notes),
        "<h2>Tables</h2>",
        "\n".join(table_html(t) for t in page.tables),
        "<h2>Figures</h2>",
        "\n".join(figure_html(f, base) for f in page.figures),
        "<h2>Study configuration (study.yaml)</h2>",
        f"<pre>{_e(page.study_yaml or '(no study.yaml in the records)')}</pre>",
        "<h2>Machine and environment</h2>",
        f'<p class="note">{_e(page.environment_source)}</p>',
        f'<table class="kv">\n{env}\n</table>',
        "</body>\n</html>\n",
    ]
    return "\n".join(p for p in parts if p)


# ----------------------------------------------------------------------------------------------- content


def environment(rec: StudyRecords) -> tuple[dict[str, str], str]:
    """Machine and package versions: recorded ones (``environment.json`` or details.environment) when the records
    hold them, else read now (the report machine). Training hosts always come from the runs' status.json."""
    recorded = records.read_json(rec.study_dir / ENVIRONMENT)
    if recorded is None:
        recorded = next((d["environment"] for d in rec.details.values() if isinstance(d.get("environment"), dict)),
                        None)
    if recorded is not None:
        env, source = {str(k): str(v) for k, v in sorted(recorded.items())}, "Recorded by the latest spikesuite run of this study (environment.json)."
    else:
        env = {"python": platform.python_version(), "platform": platform.platform(),
               "machine": platform.machine(), **{p: version(p) for p in
                                                 ("torch", "spikingjelly", "numpy", "pandas", "matplotlib", "mlflow")}}
        source = ("The records hold no environment: read when this page was generated (the report machine; the "
                  "training machine may differ).")
    hosts = sorted({str(s["host"]) for rid in rec.runs.run_id
                    if (s := records.read_json(rec.study_dir / str(rid) / STATUS)) and s.get("host")})
    env["training host(s) (status.json)"] = ", ".join(hosts) or "unknown"
    return env, source


def summary(rec: StudyRecords, figures: Sequence[Figure]) -> dict[str, str]:
    counts = rec.runs.status.value_counts()
    written = sum(1 for f in figures if f.skipped is None)
    return {
        "study": rec.name,
        "dataset": str(rec.dataset),
        "runs": ", ".join(f"{int(counts[s])} {s}" for s in ("done", "failed", "running", "pending") if s in counts)
                or "none",
        "variants": ", ".join(rec.order) or "none",
        "evaluation overrides": str(rec.evals.override.nunique()) if rec.evals is not None else "none recorded",
        "figures": f"{written} written, {len(figures) - written} skipped",
    }


def write_page(rec: StudyRecords, tables: Sequence[Table], figures: Sequence[Figure]) -> Path:
    """``report.html`` beside the records directory's ``report/``."""
    env, source = environment(rec)
    _, pub_note = published_rows(rec)
    failed = rec.runs[rec.runs.status == "failed"]
    notes = [pub_note] + [f"Failed run {r.run_id} ({r.variant}, seed {fmt_value(r.seed)}): {getattr(r, 'error', '')}"
                          for r in failed.itertuples()]
    page = Page(f"spikesuite report: {rec.name}", rec.description, summary(rec, figures),
                tables, figures, notes, rec.study_yaml, env, source)
    return write_text(rec.study_dir / HTML_PAGE, render(page, rec.study_dir))
