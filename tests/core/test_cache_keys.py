"""Cache keys follow the imports: a stage's key covers the source of every `cxr` module its task module
reaches (`cxr.core.import_closure`), so an edit deep in that closure makes the stage compute again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cxr.config.params import TrainParams
from cxr.core import import_closure as closure_module
from cxr.core.caching import ContentKey
from cxr.core.import_closure import import_closure, module_file
from tests.core.test_task_policy import STAGES
from tests.helpers.servers import REPO

CACHED_STAGES = {name: task for name, task in STAGES.items() if isinstance(task.cache_policy, ContentKey)}


def edited(monkeypatch, tmp_path, module: str) -> None:
    """From now on `module`'s source reads from a temporary copy with one more comment line."""
    original = module_file(module)
    copy = tmp_path / original.name
    copy.write_text(original.read_text() + "\n# an edited comment\n")

    def redirected(name: str):  # noqa: ANN202
        return copy if name == module else original_lookup(name)

    original_lookup = closure_module.module_file
    monkeypatch.setattr(closure_module, "module_file", redirected)


@pytest.mark.parametrize("deep", ["cxr.model.augmentation", "cxr.model.operating_points"])
def test_editing_a_module_deep_in_the_closure_changes_the_train_key(monkeypatch, tmp_path, deep):
    """augmentation is imported by networks, operating_points by training: neither by tasks/train.py, and
    neither was in the hand-written list before, so an edit served the old model from the cache."""
    train = CACHED_STAGES["train"]
    inputs = {"batches": {"digest": "d" * 64}, "params": TrainParams()}
    before = train.cache_policy.key(train, inputs)
    assert deep in import_closure(train.fn.__module__)
    edited(monkeypatch, tmp_path, deep)
    assert train.cache_policy.key(train, inputs) != before


@pytest.mark.slow  # a fresh interpreter imports TensorFlow, MLflow and Prefect once
def test_every_module_a_stage_loads_is_in_its_cache_key():
    """Import each stage's task module afresh (its heavy third-party imports already loaded): every `cxr`
    module it loads must be in the closure its key hashes (the closure also holds what functions import
    later, e.g. networks and augmentation for `train`). On the old hand-written lists `train` missed
    `cxr.model.operating_points`, and other stages missed others."""
    modules = sorted({task.fn.__module__ for task in CACHED_STAGES.values()})
    script = (
        "import importlib, json, sys\n"
        "import keras, mlflow, pandas, prefect, tensorflow  # noqa\n"
        "loaded = {}\n"
        "for name in sys.argv[1:]:\n"
        "    for key in [k for k in sys.modules if k.split('.')[0] in ('cxr', 'tasks')]:\n"
        "        del sys.modules[key]\n"
        "    importlib.import_module(name)\n"
        "    loaded[name] = sorted(k for k in sys.modules if k.split('.')[0] == 'cxr')\n"
        "print(json.dumps(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, *modules], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    missing = {name: sorted(set(found) - set(import_closure(name))) for name, found in loaded.items()}
    assert {name: left for name, left in missing.items() if left} == {}
    assert "cxr.model.operating_points" in loaded["tasks.train"]  # networks (augmentation) loads lazily
