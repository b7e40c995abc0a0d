"""Execute the tutorial notebooks with papermill into a run directory.

    python -m ppllava.run_notebooks                 # all notebooks -> runs/<timestamp>/
    python -m ppllava.run_notebooks --smoke --only 00_operations --out /tmp/run

Notebooks that need trained models share run_dir/artifacts (the tiny recipe's stages, trained by the
first notebook that asks and reused by the rest; `--artifacts` points at an earlier run's instead).
Each notebook NAME gets `runs/<ts>/NAME.ipynb` (executed) and `runs/<ts>/NAME/` (its figures and
`metrics.json`, written by its last cell); `runs/<ts>/index.html` links them all with their metrics.
"""
from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import papermill

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


def execute(notebook: Path, run_dir: Path, smoke: bool, parameters: Optional[Dict] = None,
            artifacts: Optional[Path] = None) -> Dict:
    """Run one notebook; returns its entry for the index (status, seconds, metrics).

    Notebooks that train share `artifacts` (default run_dir/artifacts): what one trained, the next reuses."""
    out_dir = run_dir / notebook.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"smoke": smoke, "out_dir": str(out_dir), "artifacts_dir": str(artifacts or run_dir / "artifacts"),
              **(parameters or {})}
    declared = papermill.inspect_notebook(str(notebook))
    params = {k: v for k, v in params.items() if k in declared}  # only what the notebook's parameters cell names
    start = time.perf_counter()
    entry = {"name": notebook.stem, "notebook": f"{notebook.stem}.ipynb", "status": "ok", "error": None}
    try:
        # Training cells stream progress bars for many minutes; on two busy cores the kernel's last
        # messages can lag the cell's reply by more than nbclient's default 4 s, which papermill
        # would turn into a failure of a cell that ran fine.
        papermill.execute_notebook(str(notebook), str(run_dir / f"{notebook.stem}.ipynb"), parameters=params,
                                   cwd=str(ROOT), progress_bar=False, kernel_name="python3", iopub_timeout=600)
    except papermill.PapermillExecutionError as err:
        entry.update(status="failed", error=f"{err.ename}: {err.evalue}")
    except Exception as err:  # a kernel that died or timed out: recorded, and the next notebook still runs
        entry.update(status="failed", error=f"{type(err).__name__}: {err}")
    entry["seconds"] = round(time.perf_counter() - start, 1)
    metrics = out_dir / "metrics.json"
    entry["metrics"] = json.loads(metrics.read_text()) if metrics.exists() else None
    entry["figures"] = sorted(str(p.relative_to(run_dir)) for p in out_dir.glob("*.png"))
    return entry


def write_index(run_dir: Path, entries: List[Dict]) -> Path:
    rows = []
    for e in entries:
        figures = " ".join(f'<a href="{html.escape(f)}"><img src="{html.escape(f)}" height="90"></a>' for f in e["figures"])
        metrics = html.escape(json.dumps(e["metrics"], indent=1)) if e["metrics"] else html.escape(e["error"] or "")
        rows.append(
            f'<tr><td><a href="{html.escape(e["notebook"])}">{html.escape(e["name"])}</a></td>'
            f'<td>{e["status"]}</td><td>{e["seconds"]}</td><td><pre>{metrics}</pre></td><td>{figures}</td></tr>'
        )
    page = (
        "<!doctype html><meta charset='utf-8'><title>ppllava run</title>"
        f"<h1>ppllava run {html.escape(run_dir.name)}</h1>"
        "<table border=1 cellpadding=4><tr><th>notebook</th><th>status</th><th>seconds</th><th>metrics</th>"
        f"<th>figures</th></tr>{''.join(rows)}</table>"
    )
    (run_dir / "index.html").write_text(page)
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
        print(f"[ppllava] {notebook.name}: {entry['status']} in {entry['seconds']} s"
              + (f" ({entry['error']})" if entry["error"] else ""), flush=True)
        entries.append(entry)
        # Written after every notebook: a long main job stopped part way still indexes what finished.
        index = write_index(run_dir, sorted({**kept, **{e["name"]: e for e in entries}}.values(), key=lambda e: e["name"]))
    print(f"[ppllava] index: {index}")
    return 0 if all(e["status"] == "ok" for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
