"""Shift proxy from real X-rays: train without one acquisition family, then score that family.

A holdout drawn from the training pool flatters: same scanners, same processing. The Kaggle train
folder holds two families of normal films (`IM-…` and `NORMAL2-IM-…`, acquired apart). This trains
`cxr train` on the folder minus every normal of one family and minus a fifth of the pneumonia
patients (chosen by a stable hash of the patient id), then runs `cxr evaluate` on exactly those
held-out images: normals from a family the model never saw, and unseen pneumonia patients. The
report gives the ROC AUC and accuracy / sensitivity / specificity at every operating point of the
model, next to the same model's in-distribution test split.

    python -m bench.family_shift --data ../shared/data/kaggle_train_224 [--family NORMAL2-] [--json] \
        [any `cxr train` flag, e.g. --epochs N --image-size S --early-stopping-patience P]

Costs one training run (minutes to tens of minutes on CPU); nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.data import image_files

PNEUMONIA_HOLDOUT = 0.2
_PATIENT = re.compile(r"^(person\d+)_")


def held_out(path: Path, family: str) -> bool:
    """Whether an image is kept out of training: a normal of `family`, or a held-out pneumonia patient."""
    if path.parent.name.upper() == "NORMAL":
        return path.name.startswith(family)
    match = _PATIENT.match(path.name)
    patient = match.group(1) if match else path.name
    return int.from_bytes(hashlib.sha256(patient.encode()).digest()[:8], "big") / 2**64 < PNEUMONIA_HOLDOUT


def link_folders(data: Path, family: str, root: Path) -> tuple[Path, Path]:
    """(training folder, proxy folder) of symlinks in the bare NORMAL/PNEUMONIA layout."""
    train, proxy = root / "train", root / "proxy"
    for path in image_files(data):
        target = (proxy if held_out(path, family) else train) / path.parent.name.upper() / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path.resolve())
    return train, proxy


def _cxr_json(arguments: list[str], home: Path) -> dict[str, Any]:
    """Run the `cxr` CLI with its own state folder; its JSON summary (the last output line)."""
    environment = {**os.environ, "CXR_HOME": str(home)}
    command = [sys.executable, "-m", "cli.main", *arguments, "--json"]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments[:1])} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(data: Path, family: str, work: Path, train_flags: list[str]) -> dict[str, Any]:
    """Train with `train_flags` (passed to `cxr train`) without the held-out images, then score those."""
    train_dir, proxy_dir = link_folders(data, family, work)
    trained = _cxr_json(["train", "--data", str(train_dir), *train_flags], work / "home")
    proxy = _cxr_json(["evaluate", "--model", trained["model_uri"], "--data", str(proxy_dir)], work / "home")
    return {
        "family": family,
        "train_flags": train_flags,
        "flow_seconds": trained["flow_seconds"],
        "epochs_run": trained["epochs_run"],
        "in_distribution_test": {
            key: trained["metrics"][key] for key in ("auc", "accuracy", "sensitivity", "specificity")
        },
        "proxy_n": proxy["n"],
        "proxy_auc": proxy["metrics"]["auc"],
        "default_operating_point": proxy["operating_point"],
        "proxy_operating_points": proxy["operating_points"],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.family_shift",
        description=__doc__.splitlines()[0],
        epilog="Any other flag is passed to `cxr train`.",
    )
    parser.add_argument("--data", required=True, type=Path, help="folder with NORMAL/ and PNEUMONIA/ images")
    parser.add_argument("--family", default="NORMAL2-", help="file-name prefix of the held-out normal family")
    parser.add_argument("--json", action="store_true")
    args, train_flags = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="cxr-family-shift-") as tmp:
        result = measure(args.data, args.family, Path(tmp), train_flags)
    if args.json:
        print(json.dumps(result))
        return
    print(f"in-distribution test: {result['in_distribution_test']}")
    print(f"held-out family {args.family!r}: {result['proxy_n']} images, ROC AUC {result['proxy_auc']:.4f}")
    for name, point in result["proxy_operating_points"].items():
        rates = " ".join(f"{key} {point[key]:.3f}" for key in ("accuracy", "sensitivity", "specificity"))
        used = " (default)" if name == result["default_operating_point"] else ""
        print(f"  {name}{used}: threshold {point['threshold']:.4f} {rates}")


if __name__ == "__main__":
    main()
