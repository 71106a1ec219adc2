"""One example per `cxr` sub-command, shown at the end of its `--help` (tests parse each one)."""

from __future__ import annotations

# The first steps, shown by `cxr --help`.
START = """\
examples:
  cxr train                                  # demo data: train, evaluate, register (prints the model URI)
  cxr train --data /data/chest_xray --json   # your own images (Kaggle layout, class folders or named files)
  cxr predict /data/new --out preds.csv      # score images with the champion
  cxr status                                 # champion, recent runs, next scheduled run, dashboard URL

docs: README.md, docs/operating.md (every command and its --json keys), docs/model.md"""

EXAMPLES = {
    "demo-data": "cxr demo-data /tmp/xrays --n 200 --size 128   # 200 images of 128 px in /tmp/xrays",
    "train": (
        "cxr train --data /data/chest_xray --external site_b=/data/site_b --json\n"
        "    # also scores /data/site_b with the new model and the champion, and gates on it"
    ),
    "ingest": "cxr ingest --data /data/chest_xray --out /tmp/checked --min-side 128   # manifest + quarantine list",
    "evaluate": "cxr evaluate --data /data/site_b --operating-point balanced --json   # the champion on site B",
    "calibrate": (
        "cxr calibrate --data /data/site_b --name site_b --target-sensitivity 0.97 --make-default\n"
        "    # a new version with points site_b:sensitivity-0.97 (its default) and site_b:balanced"
    ),
    "predict": (
        "cxr predict /data/new --out preds.csv --heatmaps heatmaps/ --operating-point site_b:sensitivity-0.97\n"
        "    # one CSV row per file; Grad-CAM overlays in heatmaps/"
    ),
    "models": "cxr models --json   # every version with metrics, alias and data digest",
    "promote": 'cxr promote 3 --reason "validated on site data"',
    "rollback": 'cxr rollback --reason "regression on ward B"',
    "dashboard": "cxr dashboard --port 4300   # or: cxr dashboard --stop",
    "mlflow-ui": "cxr mlflow-ui --port 5001",
    "serve": (
        'cxr serve --data /data/chest_xray --cron "0 2 * * *" --timezone Europe/Berlin --data-root /data \\\n'
        "    --notify-webhook https://hooks.example.org/T000/B000\n"
        "    # nightly at 02:00 Berlin time, on-new-data runs for inboxes under /data, a message on failure"
    ),
    "status": "cxr status --json   # champion, recent runs, next scheduled run, local server, inbox backlog",
    "watch": "cxr watch /data/inbox --settle 30 --debounce 600   # one event per quiet inbox, at most one per 10 min",
    "cluster": "cxr cluster up --workers 2   # then: cxr cluster status --json; cxr cluster down",
    "review": "cxr review up   # then: cxr review push; label in Label Studio; cxr review pull --into /data/chest_xray",
}


def epilog(name: str) -> str | None:
    """The `example:` block that ends NAME's help, or None for a command without one."""
    example = EXAMPLES.get(name)
    return f"example:\n  {example.replace(chr(10), chr(10) + '  ')}" if example else None
