"""`python -m bench` at its tiny preset: every measure runs and reports every key it declares."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from bench.suite import GOALS, MEASURES, expected_keys

REPO = Path(__file__).resolve().parents[2]


def test_tiny_preset_runs_every_measure_and_reports_every_key(tmp_path):
    out = tmp_path / "bench.json"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "MLFLOW_"))}
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--preset", "tiny", "--json", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    printed = json.loads(completed.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == printed

    assert printed["measures"] == [measure.name for measure in MEASURES]
    results = printed["results"]
    for key in expected_keys():
        assert isinstance(results.get(key), int | float) and math.isfinite(results[key]), key
    assert set(printed["goals"]) == {*GOALS, "ingest_vs_decode"}
    assert printed["data_source"]  # real X-rays when ../shared is there, else synthetic: stated either way

    # The incremental ingest re-checks only the one new file; below the pool threshold, one core.
    assert results["ingest_files"] == 40
    assert results["ingest_incremental_new_files"] == 1
    assert results["ingest_incremental_reused"] == 40
    assert results["ingest_cores_used"] == 1
    assert results["scaleout_files"] == 41  # the same folder, after the new file arrived
    assert results["predict_files"] == results["shift_files"] == printed["sizes"]["train_images"]
    assert printed["machine"]["cores"] == os.cpu_count()
    assert printed["command"] == "python -m bench --preset tiny --json --out " + str(out)


def test_import_profile_ranks_top_level_imports_and_finds_heavy_libraries():
    from bench.orchestration import import_profile

    report = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       500 |       2000 |     tensorflow.python",
            "import time:      1000 |    3000000 |   keras",
            "import time:       100 |    3100000 | cxr.model.networks",
            "import time:       200 |     700000 | prefect",
            "some other stderr line",
        ]
    )
    profile = import_profile(report, top=2)
    assert profile["top_level_s"] == {"cxr.model.networks": 3.1, "prefect": 0.7}
    assert profile["heavy_libraries_imported"] == ["keras", "tensorflow"]


def test_overhead_counts_time_in_which_no_task_ran():
    import datetime as dt

    from bench.orchestration import _covered_seconds

    t0 = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

    def at(seconds: float) -> dt.datetime:
        return t0 + dt.timedelta(seconds=seconds)

    # two mapped tasks side by side (0-4 s, 1-3 s), one nested in a later one, one that never ran
    runs = [(at(0), at(4)), (at(1), at(3)), (at(6), at(9)), (at(7), at(8)), (None, None)]
    assert _covered_seconds(runs) == 7.0
