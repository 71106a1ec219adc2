"""Smoke test of `python -m bench`: one cheap measure, tiny sizes, a well-formed report."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_ingest_measure_reports_finite_ratios(tmp_path):
    out = tmp_path / "bench.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "MLFLOW_"))}
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", "--only", "ingest", "--ingest-images", "40"]
        + ["--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    printed = json.loads(completed.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == printed

    results = printed["results"]
    for key in ("ingest_vs_decode", "incremental_ingest_ratio", "ingest_img_s", "plain_decode_img_s"):
        assert math.isfinite(results[key]) and results[key] > 0, key
    assert results["ingest_files"] == 40
    assert results["ingest_incremental_new_files"] == 1
    assert results["ingest_incremental_reused"] == 40  # only the new file is decoded again
    assert results["ingest_cores_used"] == 1  # below the ingest's process-pool threshold
    assert set(printed["goals"]) == {"ingest_vs_decode", "incremental_ingest_ratio"}
    assert printed["goals"]["ingest_vs_decode"]["goal"] == ">= 0.8"
    assert printed["machine"]["cores"] == os.cpu_count()
    assert printed["command"].startswith("python -m bench --quick")


def test_import_profile_ranks_top_level_imports_and_finds_heavy_libraries():
    from bench.orchestration import import_profile

    report = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       500 |       2000 |     tensorflow.python",
            "import time:      1000 |    3000000 |   keras",
            "import time:       100 |    3100000 | cxr.models",
            "import time:       200 |     700000 | prefect",
            "some other stderr line",
        ]
    )
    profile = import_profile(report, top=2)
    assert profile["top_level_s"] == {"cxr.models": 3.1, "prefect": 0.7}
    assert profile["heavy_libraries_imported"] == ["keras", "tensorflow"]
