"""Execute the tutorial notebooks with papermill into a run directory, and render them for a browser.

    python -m ppllava.run_notebooks                 # all notebooks -> runs/<timestamp>/
    python -m ppllava.run_notebooks --smoke --only 00_operations --out /tmp/run

Notebooks that need trained models share run_dir/artifacts (the tiny recipe's stages, trained by the
first notebook that asks and reused by the rest; `--artifacts` points at an earlier run's instead).
Each notebook NAME gets `runs/<ts>/NAME.ipynb` (executed), `runs/<ts>/NAME.html` (the same, rendered with
its figures embedded, so it reads without Jupyter) and `runs/<ts>/NAME/` (its figures and `metrics.json`,
written by its last cell). `runs/<ts>/index.html` links the pages with each notebook's time, status,
headline metrics and figure thumbnails. While a notebook runs, stderr shows a bar of its cells.
"""
from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import nbformat
import papermill
from nbconvert import HTMLExporter
from papermill.engines import NBClientEngine, papermill_engines

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def notebook_paths(only: Optional[List[str]] = None) -> List[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        known = {p.stem: p for p in paths}
        missing = [name for name in only if name not in known]
        if missing:
            raise SystemExit(f"unknown notebooks {missing}; known: {sorted(known)}")
        paths = [known[name] for name in only]
    return paths


class TickingEngine(NBClientEngine):
    """papermill's nbclient engine with its cell bar redrawn every few seconds. tqdm redraws only when a
    cell ends, so during a cell that trains for half an hour the bar's elapsed time would stand still."""

    tick_s = 5.0

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
        done = threading.Event()

        def tick():
            while not done.wait(cls.tick_s):
                if nb_man.pbar is not None:  # None when progress_bar is off
                    nb_man.pbar.refresh()

        ticker = threading.Thread(target=tick, name="papermill-bar", daemon=True)
        ticker.start()
        try:
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
        finally:
            done.set()
            ticker.join()  # before papermill closes the bar


papermill_engines.register("ppllava", TickingEngine)


def execute(notebook: Path, run_dir: Path, smoke: bool, parameters: Optional[Dict] = None,
            artifacts: Optional[Path] = None) -> Dict:
    """Run one notebook and render it; returns its entry for the index (status, seconds, page, metrics).

    Notebooks that train share `artifacts` (default run_dir/artifacts): what one trained, the next reuses."""
    out_dir = run_dir / notebook.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = run_dir / f"{notebook.stem}.ipynb"
    # A rerun into the same run directory must not show the previous run's page, numbers and figures as its own.
    for stale in [executed, executed.with_suffix(".html"), out_dir / "metrics.json", *out_dir.glob("*.png")]:
        stale.unlink(missing_ok=True)
    params = {"smoke": smoke, "out_dir": str(out_dir), "artifacts_dir": str(artifacts or run_dir / "artifacts"),
              **(parameters or {})}
    declared = papermill.inspect_notebook(str(notebook))
    params = {k: v for k, v in params.items() if k in declared}  # only what the notebook's parameters cell names
    start = time.perf_counter()
    entry = {"name": notebook.stem, "notebook": executed.name, "status": "ok", "error": None}
    try:
        # Training cells stream progress bars for many minutes; on two busy cores the kernel's last
        # messages can lag the cell's reply by more than nbclient's default 4 s, which papermill
        # would turn into a failure of a cell that ran fine.
        # progress_bar: a tqdm bar of cells on stderr named after the notebook ("01_tour: 5/23 cells");
        # the cells' own output stays in the notebook (log_output is off).
        papermill.execute_notebook(str(notebook), str(executed), parameters=params, cwd=str(ROOT),
                                   progress_bar={"desc": notebook.stem}, engine_name="ppllava", kernel_name="python3",
                                   iopub_timeout=600)
    except papermill.PapermillExecutionError as err:
        entry.update(status="failed", error=f"{err.ename}: {err.evalue}")
    except Exception as err:  # a kernel that died or timed out: recorded, and the next notebook still runs
        entry.update(status="failed", error=f"{type(err).__name__}: {err}")
    entry["seconds"] = round(time.perf_counter() - start, 1)
    # papermill writes the output notebook before its first cell and after each, so a failed run has
    # a partial notebook (with the traceback) to render; only a failure before that leaves none.
    entry["page"] = render_page(executed, notebook).name if executed.exists() else None
    metrics = out_dir / "metrics.json"
    entry["metrics"] = json.loads(metrics.read_text()) if metrics.exists() else None
    entry["figures"] = sorted(p.relative_to(run_dir).as_posix() for p in out_dir.glob("*.png"))
    return entry


def render_page(executed: Path, source: Path) -> Path:
    """Write executed.html beside the executed notebook: one file, its output figures inline (data URIs).

    Markdown images are embedded too, resolved from the source notebook's folder as Jupyter would."""
    nb = nbformat.read(executed, as_version=4)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": source.stem, "path": str(source.parent)}})
    page = executed.with_suffix(".html")
    page.write_text(body, encoding="utf-8")
    return page


# The few numbers a reader of the index wants first from each notebook's metrics.json; the full file is
# one click away. tests/test_notebooks.py checks that every key named here exists in a smoke run.
def _at_length(rows: List[Dict], length: int, key: str) -> Dict[str, float]:
    return {f"{key}, {r['mode']}, {length} frames": r[key] for r in rows if r["frames"] == length}


HEADLINES: Dict[str, Callable[[Dict], Dict]] = {
    "00_operations": lambda m: {
        "softmax relevance on the object": m["relevance_mass_on_object"],
        **{f"object share, {label} pooling, {m['needle'][-1]['frames']} frames": m["needle"][-1][f"{key}: object share"]
           for label, key in (("prompt", "prompt, softmax"), ("mean", "mean (adaptive)"))},
        "CLIP positions after extension": m["extended_positions"]},
    "01_tour": lambda m: {
        "visual tokens per video: none → prompt": (m["visual_tokens"]["none"], m["visual_tokens"]["prompt"]),
        "parameters, tiny": m["parameters_tiny"], "parameters, paper preset": m["parameters_paper"],
        "answer (expected)": f"{m['answer']!r} ({m['expected']!r})"},
    "02_alignment": lambda m: {
        **{f"pointing accuracy, {tower} CLIP": v for tower, v in m["pointing"].items()},
        "learned temperature": m["learned_tau"]},
    "03_pooling_ablations": lambda m: {
        f"video accuracy, {mode} ({r['tokens']} tokens)": r["video"] for mode, r in m["headline"].items()},
    "04_context_extension": lambda m: {
        f"pointing at {m['prompt_tokens'][-1]} prompt tokens, {name}": curve[-1]
        for name, curve in m["pointing"].items()},
    "05_sft": lambda m: {
        "held-out accuracy, all": m["accuracy"]["all"], "test records": m["test_records"],
        "training steps": m["steps"]},
    "06_dpo": lambda m: {
        f"{key.replace('_', ' ')}: SFT → DPO": (m["before"][key], m["after"][key])
        for key in ("preference_accuracy", "hallucination_rate", "error_rate")},
    "07_long_video": lambda m: {
        **_at_length(m["needle"], max(m["lengths"]), "accuracy"),
        "relevance on the needle's frames": m["relevance_on_needle_frames"]},
    "08_chat": lambda m: {
        "scripted questions answered right": f"{m['scored_correct']} of {m['scored_questions']}", "turns": m["turns"]},
    "09_real_checkpoints": lambda m: {
        "checked": m["checked"],
        "max |logit difference| vs transformers": m.get("parity_max_abs_logit_diff"),  # absent: parity_check=False
        "visual tokens for the video": m["visual_tokens"]},
}


def headline_metrics(name: str, metrics: Dict) -> Dict[str, str]:
    """Label -> formatted value. A notebook without a HEADLINES entry shows its top-level scalars.

    Raises KeyError/IndexError when metrics.json lacks a value HEADLINES names."""
    if name in HEADLINES:
        values = HEADLINES[name](metrics)
    else:
        values = {k: v for k, v in metrics.items() if v is None or isinstance(v, (str, int, float))}
        values = dict(list(values.items())[:6])
    return {label: " → ".join(map(_format, v)) if isinstance(v, tuple) else _format(v) for label, v in values.items()}


def _format(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,d}"
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.1e}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def _format_seconds(seconds: float) -> str:
    whole = round(seconds)
    return f"{seconds:.1f} s" if seconds < 60 else f"{whole // 60} min {whole % 60:02d} s"


def _index_row(e: Dict) -> str:
    name, esc = e["name"], html.escape
    page = e.get("page")  # entries kept from an index written before pages existed have none
    title = f'<a href="{esc(page)}">{esc(name)}</a>' if page else f"{esc(name)} <small>(no page)</small>"
    if e["metrics"]:
        try:
            lines = "".join(f"<tr><td>{esc(k)}</td><td class=num>{esc(v)}</td></tr>"
                            for k, v in headline_metrics(name, e["metrics"]).items())
        except (KeyError, IndexError) as err:  # a notebook whose metrics changed: say so, still index the rest
            lines = f"<tr><td class=error colspan=2>headline missing from metrics.json: {esc(repr(err))}</td></tr>"
        full = esc(json.dumps(e["metrics"], indent=1))
        metrics = (f"<table class=metrics>{lines}</table>"
                   f"<details><summary>metrics.json</summary><pre>{full}</pre></details>")
    else:
        metrics = ""
    error = f"<pre class=error>{esc(e['error'])}</pre>" if e["error"] else ""
    figures = " ".join(f'<a href="{esc(f)}"><img src="{esc(f)}" alt="{esc(Path(f).name)}"></a>' for f in e["figures"])
    return (f'<tr id="{esc(name)}" data-status="{esc(e["status"])}" data-seconds="{e["seconds"]}">'
            f'<td>{title}</td><td class="{esc(e["status"])}">{esc(e["status"])}</td>'
            f'<td class=num>{_format_seconds(e["seconds"])}</td><td>{error}{metrics}</td><td>{figures}</td></tr>')


STYLE = """body { font-family: sans-serif; margin: 1.5em; } table { border-collapse: collapse; }
td, th { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
table.metrics td { border: none; padding: 1px 6px; } .num { text-align: right; white-space: nowrap; }
.ok { color: #060; } .failed, .error { color: #b00; } pre { font-size: 80%; white-space: pre-wrap; max-width: 50em; }
img { height: 90px; margin: 2px; border: 1px solid #ddd; }"""


def write_index(run_dir: Path, entries: List[Dict]) -> Path:
    failed = sum(e["status"] != "ok" for e in entries)
    total = sum(e["seconds"] for e in entries)
    page = (
        f"<!doctype html><html lang=en><meta charset='utf-8'><title>ppllava run {html.escape(run_dir.name)}</title>"
        f"<style>{STYLE}</style><h1>ppllava run {html.escape(run_dir.name)}</h1>"
        f"<p>{len(entries)} notebook{'s' * (len(entries) != 1)}, {failed} failed, {_format_seconds(total)} in all. "
        "Each name opens the executed notebook as a page; the figures open full size.</p>"
        "<table><tr><th>notebook</th><th>status</th><th>time</th><th>headline metrics</th><th>figures</th></tr>"
        f"{''.join(_index_row(e) for e in entries)}</table></html>"
    )
    (run_dir / "index.html").write_text(page, encoding="utf-8")
    (run_dir / "index.json").write_text(json.dumps(entries, indent=2))
    return run_dir / "index.html"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="run directory (default runs/<timestamp>)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and few steps, as the tests run them")
    parser.add_argument("--only", nargs="+", help="notebook names without .ipynb, e.g. 00_operations")
    parser.add_argument("--artifacts", type=Path,
                        help="reuse the trained stages of an earlier run, e.g. runs/20261125-120000/artifacts")
    args = parser.parse_args(argv)
    known = {p.stem for p in notebook_paths()}
    unknown = [name for name in args.only or [] if name not in known]
    if unknown:  # before the run directory is made: a typo leaves nothing behind
        parser.error(f"--only: unknown notebooks {unknown}; known: {sorted(known)}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file, not a run directory")
    if args.artifacts is not None and args.artifacts.exists() and not args.artifacts.is_dir():
        parser.error(f"--artifacts {args.artifacts} is a file, not a directory of trained stages")
    run_dir = args.out or ROOT / "runs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    # A rerun of some notebooks into an existing run directory keeps the index entries of the others.
    previous = run_dir / "index.json"
    kept = {e["name"]: e for e in json.loads(previous.read_text())} if previous.exists() else {}
    entries, index = [], run_dir / "index.html"
    for notebook in notebook_paths(args.only):
        print(f"[ppllava] {notebook.name} ...", flush=True)
        entry = execute(notebook, run_dir, args.smoke, artifacts=args.artifacts)
        print(f"[ppllava] {notebook.name}: {entry['status']} in {entry['seconds']} s, page {entry['page']}"
              + (f" ({entry['error']})" if entry["error"] else ""), flush=True)
        entries.append(entry)
        # Written after every notebook: a long main job stopped part way still indexes what finished.
        index = write_index(run_dir, sorted({**kept, **{e["name"]: e for e in entries}}.values(), key=lambda e: e["name"]))
    print(f"[ppllava] index: {index}")
    return 0 if all(e["status"] == "ok" for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
