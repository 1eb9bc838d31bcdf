"""build(outputs): every sweep's figures and tables, then report.html, one page showing them all.

Per sweep (every sweep whose job list names a run, and the one its run.json names; runs started
directly that no job list names are "single runs"):
`figures/<sweep>--<figure>.png|pdf`, `tables/<sweep>--phase_table.csv|md|tex` (and the transfer
table when runs measured transfer), then `report.html`, which opens offline in a browser. A figure
is redrawn only when its sweep's metrics or the code that draws it changed (fingerprints in
`figures/manifest.json`); tables and the page are cheap and always rewritten.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from phases.analysis import agreement, convergence, phase_detection, plots, representation, selectors, tables
from phases.analysis.runs import Runs, load_runs, summary, write_tables
from phases.store.files import write_atomically, write_json, write_text
from phases.store.record import RunStatus, now

# Every figure a sweep may get: the paper's (plots.py), for a sweep varying probe.train_size whether
# the probes' estimates are converged (convergence.py), and for runs fitting a fast probe beside its
# published recipe how their curves agree (agreement.py), and for runs recording representation measures
# how they move with the RL (representation.py).
FIGURES = {**plots.FIGURES, "probe_convergence": convergence.probe_convergence,
           "probe_agreement": agreement.probe_agreement,
           "representation_measures": representation.representation_measures}

# The modules a figure is drawn by: a change to any of them redraws every figure.
FIGURE_CODE = (plots, selectors, phase_detection, convergence, agreement, representation)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def fingerprint(metrics: pd.DataFrame, keys: list[str]) -> str:
    digest = hashlib.sha256()
    for module in FIGURE_CODE:
        digest.update(Path(module.__file__).read_bytes())
    digest.update(json.dumps(keys).encode())
    rows = metrics.sort_values(["run_id", "step", "layer", "probe", "metric", "split"]).reset_index(drop=True)
    digest.update(pd.util.hash_pandas_object(rows.astype(str), index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def save_figure(figure: plt.Figure, stem: Path) -> None:
    for suffix in ("png", "pdf"):
        write_atomically(stem.with_suffix(f".{suffix}"),
                         lambda temporary, kind=suffix: figure.savefig(temporary, format=kind, dpi=130,
                                                                       bbox_inches="tight"))
    plt.close(figure)


def draw_sweep(metrics: pd.DataFrame, keys: list[str], stem: str, folder: Path, manifest: dict,
               failures: list[str]) -> list[Path]:
    """The sweep's figures as PNG paths, drawing only those whose fingerprint changed; a figure that
    cannot be drawn is added to `failures` and redrawn next time."""
    drawn = []
    sweep_fingerprint = fingerprint(metrics, keys)
    for name, draw in FIGURES.items():
        path = folder / f"{stem}--{name}.png"
        known = manifest.get(path.name)
        if known and known["fingerprint"] == sweep_fingerprint and (not known["drawn"] or path.is_file()):
            drawn += [path] if known["drawn"] else []
            continue
        try:
            figure = draw(metrics, keys)
        except Exception as error:  # measurements of an odd shape lose one figure, not the whole page
            failures.append(f"figure {name} not drawn: {type(error).__name__}: {error}")
            continue
        if figure is not None:
            save_figure(figure, path.with_suffix(""))
            drawn.append(path)
            print(f"drew {path} (and .pdf)")
        else:  # the runs no longer measure what it shows: no stale picture left beside the others
            for suffix in (".png", ".pdf"):
                path.with_suffix(suffix).unlink(missing_ok=True)
        manifest[path.name] = {"fingerprint": sweep_fingerprint, "drawn": figure is not None}
    return drawn


def sweep_tables(metrics: pd.DataFrame, keys: list[str], stem: str, folder: Path,
                 failures: list[str]) -> dict[str, pd.DataFrame]:
    built = {}
    for title, make in (("phase table", tables.phase_table), ("transfer table", tables.transfer_table),
                        ("probe convergence", convergence.convergence_table),
                        ("probe agreement", agreement.agreement_table),
                        ("representation measures", representation.representation_table)):
        try:
            built[title] = make(metrics, keys)
        except Exception as error:  # as for figures: one table lost, not the whole page
            failures.append(f"{title} not built: {type(error).__name__}: {error}")
    built = {title: table for title, table in built.items() if not table.empty}
    for title, table in built.items():
        tables.write_table(table, folder / f"{stem}--{title.replace(' ', '_')}")
    return built


def caption(name: str) -> str:
    return " ".join((FIGURES[name].__doc__ or name).split())


PAGE_SCRIPT = """<script>
// Marks the page once every image has loaded or failed: data-images-loaded / data-images-total on <body>,
// class "broken" on an image that did not load (what the headless-browser test reads).
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((image) => image.complete && image.naturalWidth > 0);
  images.filter((image) => !loaded.includes(image)).forEach((image) => image.classList.add("broken"));
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = loaded.length;
});
</script>"""

PAGE_STYLE = """<style>
body { font-family: sans-serif; margin: 2em; max-width: 1600px; }
img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
figure { margin: 1.5em 0; } figcaption { color: #444; font-size: 0.9em; }
.left-out { color: #a00; }
</style>"""


def sweep_section(sweep: str, runs: Runs, pictures: list[Path], built: dict[str, pd.DataFrame],
                  failures: list[str]) -> str:
    own = runs.runs[runs.runs["sweep"] == sweep]
    counts = ", ".join(f"{count} {status}" for status, count in own["status"].value_counts().sort_index().items())
    parts = [f'<h2 id="{html.escape(slug(sweep))}">{html.escape(sweep)}</h2>', f"<p>{len(own)} runs: {counts}.</p>"]
    left_out = own[own["status"] != RunStatus.done.value]
    if not left_out.empty:
        parts.append('<p class="left-out">Left out of the figures and tables:</p><ul class="left-out">')
        parts += [f"<li>{html.escape(row.run_id)}: {html.escape(str(row.status))}"
                  f"{': ' + html.escape(str(row.reason)) if row.reason else ''}</li>" for row in left_out.itertuples()]
        parts.append("</ul>")
    if failures:
        parts.append('<ul class="left-out">' + "".join(f"<li>{html.escape(failure)}</li>" for failure in failures)
                     + "</ul>")
    for picture in pictures:
        name = picture.stem.split("--", 1)[1]
        parts.append(f'<figure><img src="figures/{html.escape(picture.name)}" alt="{html.escape(name)}">'
                     f"<figcaption>{html.escape(caption(name))} (<a href=\"figures/{html.escape(picture.stem)}.pdf\">"
                     "PDF</a>)</figcaption></figure>")
    for title, table in built.items():
        parts.append(f"<h3>{html.escape(title)}</h3>")
        parts.append(tables.readable(table).to_html(index=False, border=0))
    return "\n".join(parts)


def write_report(outputs: Path, sections: dict[str, str]) -> Path:
    index = " · ".join(f'<a href="#{html.escape(slug(sweep))}">{html.escape(sweep)}</a>' for sweep in sections)
    page = "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      "<title>phases: figures and tables</title>", PAGE_STYLE, "</head><body>",
                      f"<h1>Learning phases: the runs under {html.escape(str(outputs))}</h1>",
                      f"<p>Written {now()} by <code>make figures</code>. Sweeps: {index}</p>",
                      *sections.values(), PAGE_SCRIPT, "</body></html>"])
    path = outputs / "report.html"
    write_text(path, page)
    return path


def read_figure_manifest(path: Path) -> dict:
    """The fingerprints of the figures drawn before; none (everything is redrawn) when the file is unusable."""
    try:
        manifest = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(manifest, dict):
        return {}
    return {name: entry for name, entry in manifest.items() if isinstance(entry, dict)
            and isinstance(entry.get("fingerprint"), str) and isinstance(entry.get("drawn"), bool)}


def build(outputs: Path | str) -> int:
    """Figures, tables and report.html of every run under `outputs`; the exit status: 0 also when there
    are no finished runs yet (that is said, not an error), 1 when a figure or table could not be made.
    OSError when the outputs folder cannot be read or written (phases.figures says so in one line)."""
    outputs = Path(outputs)
    runs = load_runs(outputs)
    if runs.runs.empty:
        print(f"no runs under {outputs / 'runs'}: make some with `make demo` or `make sweep-smoke`")
        return 0
    if runs.metrics.empty:
        print(f"no finished runs under {outputs / 'runs'}: make some with `make demo` or `make sweep-smoke`")
    print(summary(runs))
    write_tables(runs, outputs)
    plots.style()
    manifest_path = outputs / "figures" / "manifest.json"
    manifest = read_figure_manifest(manifest_path)
    sections, failed = {}, False
    for sweep in sorted(runs.runs["sweep"].unique()):
        metrics = runs.metrics[runs.metrics["sweep"] == sweep] if not runs.metrics.empty else runs.metrics
        keys = ["dataset", "arch", *runs.settings.get(sweep, [])]
        pictures, built, failures = [], {}, []
        if not metrics.empty:
            metrics = metrics.dropna(axis=1, how="all")
            keys = [key for key in keys if key in metrics]
            pictures = draw_sweep(metrics, keys, slug(sweep), outputs / "figures", manifest, failures)
            built = sweep_tables(metrics, keys, slug(sweep), outputs / "tables", failures)
        for failure in failures:
            print(f"{sweep}: {failure}")
        failed = failed or bool(failures)
        sections[sweep] = sweep_section(sweep, runs, pictures, built, failures)
    if manifest:
        write_json(manifest_path, manifest)
    print(f"wrote {write_report(outputs, sections)}")
    return 1 if failed else 0
