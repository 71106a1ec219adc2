"""The logged pyfunc: decoding, operating points, and loading `@champion` where this repository is absent."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import urllib.error
import urllib.request
from importlib.metadata import version as package_version
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.core import mlflow_store
from cxr.core.atomic_files import sha256_file
from cxr.data.imaging import BadImage, decode_greyscale, load_greyscale
from cxr.evaluation.domain import MIN_SIDE_KEY
from cxr.model import loading
from cxr.model.operating_points import operating_points
from cxr.ops.server import free_port, stop_process_group
from cxr.registry import versions
from cxr.registry.pyfunc_logging import PACKAGE_DIR, log_pyfunc_model, shipped_modules
from cxr.registry.pyfunc_model import (
    KERAS_ARTIFACT,
    METADATA_ARTIFACT,
    PneumoniaModel,
    grey_from_array,
    image_from_cell,
)
from tests.helpers.domain_cases import add_domain_score, chest_images
from tests.helpers.image_files import write_dicom
from tests.helpers.isolated import isolated_env, isolated_python, run_isolated
from tests.helpers.servers import wait_for

SIZE = 32
NAME = "cxr-pneumonia"


def write_images(folder: Path) -> list[Path]:
    """PNG, JPEG, RGB, 16-bit and DICOM files of varied content, plus a corrupt and an empty file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for index in range(6):
        pixels = rng.integers(0, 256, (40 + index, 48), dtype=np.uint8)
        path = folder / f"noise{index}.{'png' if index % 2 else 'jpg'}"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    gradient = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    Image.fromarray(np.stack([gradient, gradient.T, gradient], axis=-1)).save(folder / "rgb.png")
    Image.fromarray(gradient.astype(np.uint16) * 200).save(folder / "deep.png")
    write_dicom(folder / "chest.dcm", (rng.random((50, 60)) * 4000).astype(np.uint16))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "empty.jpg").write_bytes(b"")
    return [*paths, folder / "rgb.png", folder / "deep.png", folder / "chest.dcm"] + [
        folder / "broken.png",
        folder / "empty.jpg",
    ]


def save_network(folder: Path, metadata: dict) -> tuple[Path, Path]:
    """A `default`-architecture network (the project's custom layers) and its model.json."""
    from cxr.model.networks import build_model

    folder.mkdir(parents=True, exist_ok=True)
    build_model("default", SIZE).save(folder / "model.keras")
    (folder / "model.json").write_text(json.dumps({"model_name": "default", "image_size": SIZE, **metadata}))
    return folder / "model.keras", folder / "model.json"


def loaded(model_path: Path, metadata_path: Path) -> PneumoniaModel:
    model = PneumoniaModel()
    model.load_context(
        SimpleNamespace(artifacts={KERAS_ARTIFACT: str(model_path), METADATA_ARTIFACT: str(metadata_path)})
    )
    return model


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("images"))


def write_unanswerable(folder: Path) -> list[Path]:
    """Files no reader of `decision` may get pneumonia or normal for: blank (dark to bright), noise, gradients,
    colour noise, and tiny images (below the champion's smallest side)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    pictures = {f"blank{level}": np.full((64, 64), level, np.uint8) for level in (0, 40, 128, 200, 255)}
    pictures |= {f"noise{index}": rng.integers(0, 256, (64, 64), dtype=np.uint8) for index in range(3)}
    ramp = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    pictures |= {"gradient_h": ramp, "gradient_v": ramp.T, "gradient_d": ((ramp.astype(int) + ramp.T) // 2)}
    pictures |= {
        f"colour_noise{index}": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for index in range(3)
    }
    pictures |= {
        "tiny_grey": rng.integers(0, 256, (12, 12), dtype=np.uint8),
        "tiny_blank": np.zeros((8, 8), np.uint8),
    }
    paths = []
    for name, pixels in pictures.items():
        path = folder / f"{name}.png"
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def unanswerable(tmp_path_factory) -> list[Path]:
    return write_unanswerable(tmp_path_factory.mktemp("unanswerable"))


def test_single_threshold_is_the_default_point():
    points, default = operating_points({"threshold": 0.3, "threshold_rule": "rule"})
    assert default == "default" and points == {"default": {"threshold": 0.3, "rule": "rule"}}


def test_named_points_and_their_default():
    metadata = {"operating_points": {"screening": {"threshold": 0.2}, "balanced": {"threshold": 0.6}}}
    assert operating_points({**metadata, "default_operating_point": "balanced"})[1] == "balanced"
    assert operating_points(metadata)[1] == "screening"
    with pytest.raises(ValueError, match="not one of"):
        operating_points({**metadata, "default_operating_point": "missing"})


def test_bytes_decode_as_the_file_does(images):
    for path in images[:9]:
        assert np.array_equal(decode_greyscale(path.read_bytes(), SIZE), load_greyscale(path, SIZE)), path
    for path in images[9:]:
        with pytest.raises(BadImage) as from_file:
            load_greyscale(path, SIZE)
        with pytest.raises(BadImage) as from_bytes:
            decode_greyscale(path.read_bytes(), SIZE)
        assert from_bytes.value.reason == from_file.value.reason


def test_cells_accept_arrays_and_base64():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    from_png = image_from_cell(png_bytes(grey), SIZE)
    assert np.array_equal(image_from_cell(grey, SIZE), from_png)
    assert np.array_equal(image_from_cell(grey[..., None], SIZE), from_png)
    assert np.array_equal(image_from_cell(base64.b64encode(png_bytes(grey)).decode(), SIZE), from_png)
    assert np.array_equal(image_from_cell(base64.encodebytes(png_bytes(grey)), SIZE), from_png)
    assert np.allclose(image_from_cell(grey.astype(np.float32), SIZE), from_png, atol=1)
    assert image_from_cell(np.stack([grey] * 3, axis=-1), SIZE).shape == (SIZE, SIZE)
    for bad in (np.zeros((2, 3, 4, 5)), np.full((8, 8), 300.0), np.full((8, 8), np.nan), np.array([["a"]])):
        with pytest.raises(BadImage) as refused:
            grey_from_array(bad, SIZE)
        assert refused.value.reason == "bad_array"
    with pytest.raises(BadImage) as refused:
        image_from_cell("not base64 at all!", SIZE)
    assert refused.value.reason == "not_an_image"
    for cell in (grey, png_bytes(grey)):  # 40 px high: below a minimum side of 41, not of 40
        assert image_from_cell(cell, SIZE, min_side=40).shape == (SIZE, SIZE)
        with pytest.raises(BadImage) as refused:
            image_from_cell(cell, SIZE, min_side=41)
        assert refused.value.reason == "too_small"


def test_operating_point_chosen_per_request(tmp_path):
    points = {"screening": {"threshold": 0.0}, "strict": {"threshold": 1.01}}
    model = loaded(*save_network(tmp_path, {"operating_points": points, "default_operating_point": "strict"}))
    frame = pd.DataFrame({"image": [png_bytes(np.full((40, 40), 90, np.uint8)), b"", None]})
    strict = model.predict(None, frame)
    assert list(strict["label"][:1]) == ["normal"] and set(strict["operating_point"]) == {"strict"}
    assert list(strict["status"]) == ["ok", "empty_file", "missing"]
    # Saved without a domain score: no verdict rather than a guess.
    assert strict["in_domain"].isna().all() and strict["domain_score"].isna().all()
    screening = model.predict(None, frame, params={"operating_point": "screening"})
    assert screening["label"][0] == "pneumonia" and screening["threshold"][0] == 0.0
    assert screening["p_pneumonia"][0] == pytest.approx(strict["p_pneumonia"][0])
    with pytest.raises(ValueError, match="unknown operating point 'other'"):
        model.predict(None, frame, params={"operating_point": "other"})


def test_the_pyfunc_refers_an_image_inside_the_models_referral_band(tmp_path):
    model_path, metadata_path = save_network(tmp_path, {"threshold": 0.5})
    frame = pd.DataFrame({"image": [png_bytes(np.full((40, 40), 90, np.uint8)), b""]})
    answered = loaded(model_path, metadata_path).predict(None, frame)
    p = float(answered["p_pneumonia"][0])
    assert answered["decision"].tolist() == [answered["label"][0], "empty_file"]
    metadata = json.loads(metadata_path.read_text())
    metadata_path.write_text(json.dumps({**metadata, "referral": {"low": p - 0.01, "high": p + 0.01}}))
    referred = loaded(model_path, metadata_path).predict(None, frame)
    assert referred["decision"].tolist() == ["refer", "empty_file"]
    assert referred["label"][0] == answered["label"][0] and referred["probability"][0] == p


def test_shipped_code_is_what_the_pyfunc_imports():
    names = {path.relative_to(PACKAGE_DIR).as_posix() for path in shipped_modules()}
    assert {
        "__init__.py",
        "registry/__init__.py",
        "registry/pyfunc_model.py",
        "data/imaging.py",
        "model/networks.py",
        "model/operating_points.py",
    } <= names
    assert not names & {
        "registry/versions.py",
        "core/state.py",
        "registry/pyfunc_logging.py",
        "registry/pyfunc_entry.py",
    }


@pytest.fixture(scope="module")
def champion(tmp_path_factory, images, unanswerable) -> dict:
    """A network registered as `@champion` in a fresh sqlite store, with a threshold that splits `images`."""
    from cxr.evaluation.predicting import score_files

    folder = tmp_path_factory.mktemp("champion")
    model_path, metadata_path = save_network(
        folder / "trained", {"threshold": 0.5, "classes": ["pneumonia", "normal"]}
    )
    network, metadata = loading.load_model_with_metadata(model_path)
    probabilities = np.sort(score_files(network, metadata, images)["probability"].dropna().to_numpy())
    middle = len(probabilities) // 2
    metadata["threshold"] = float(probabilities[middle - 1] + probabilities[middle]) / 2
    metadata_path.write_text(json.dumps(metadata))
    chests = chest_images(folder / "chests", n=60, size=SIZE)
    metadata = add_domain_score(folder / "trained", chests[:40], chests[40:])
    # As a run's ingest would have it: the two noise images under 42 px are refused (`too_small`), not stretched.
    metadata[MIN_SIDE_KEY] = 42
    metadata_path.write_text(json.dumps(metadata))
    expected = score_files(network, metadata, images)
    assert list(expected["status"][:3]) == ["too_small", "too_small", "ok"]
    assert set(expected["in_domain"].dropna()) == {False}  # noise and gradients are no chest X-rays
    assert set(expected["label"].dropna()) == {"pneumonia", "normal"}
    # Each image the system should not answer alone: its decision is out_of_domain or its refusal.
    assert set(expected["decision"]) <= {"out_of_domain", "too_small", "empty_file", "not_an_image"}
    withheld = score_files(network, metadata, unanswerable)
    assert set(withheld["label"].dropna()) == {"pneumonia", "normal"}  # the label alone would answer
    assert set(withheld["decision"]) == {"out_of_domain", "too_small"}
    expected = pd.concat([expected, withheld], ignore_index=True)

    import mlflow

    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with mlflow.start_run(experiment_id=versions.ensure_experiment(tracking_uri)):
        info = log_pyfunc_model(model_path, metadata_path, model_sha256=sha256_file(model_path), name="model")
    mlflow_client = mlflow_store.client(tracking_uri)
    mlflow_client.create_registered_model(NAME)
    version = mlflow_client.create_model_version(
        NAME, source=info.model_uri, run_id=info.run_id, model_id=info.model_id
    )
    versions.promote(NAME, int(version.version), "test", tracking_uri)
    return {"tracking_uri": tracking_uri, "expected": expected, "folder": folder, "metadata": metadata}


def test_logged_model_metadata(champion):
    import mlflow
    from mlflow.models import get_model_info

    # Other test modules point MLflow's process-wide URIs elsewhere.
    mlflow.set_tracking_uri(champion["tracking_uri"])
    mlflow.set_registry_uri(champion["tracking_uri"])
    info = get_model_info(f"models:/{NAME}@champion")
    meta = info.metadata
    assert meta["keras_version"] == package_version("keras")
    assert meta["operating_points"] == {"default": {"threshold": champion["metadata"]["threshold"]}}
    assert meta["classes"] == ["pneumonia", "normal"] and meta["image_size"] == SIZE
    assert info.signature.inputs.input_names() == ["image"]
    outputs = info.signature.outputs.input_names()
    assert outputs[:4] == ["p_pneumonia", "label", "decision", "operating_point"] and "probability" in outputs
    assert info.saved_input_example_info is not None


LOAD_AND_PREDICT = """
import base64, json, sys
import mlflow, pandas as pd
tracking_uri, paths = sys.argv[1], json.loads(sys.argv[2])
mlflow.set_tracking_uri(tracking_uri)
mlflow.set_registry_uri(tracking_uri)
model = mlflow.pyfunc.load_model("models:/cxr-pneumonia@champion")
encoded = [open(path, "rb").read() for path in paths]
from_bytes = model.predict(pd.DataFrame({"image": encoded}))
from_text = model.predict(pd.DataFrame({"image": [base64.b64encode(data).decode() for data in encoded]}))
assert from_text.equals(from_bytes), "base64 text and bytes disagree"
print(json.dumps({"rows": from_bytes.to_dict("records"), "modules": sorted(m for m in sys.modules if m.startswith("cxr")),
                  "cxr_file": sys.modules["cxr"].__file__}))
"""


def test_champion_loads_and_agrees_with_cxr_predict_without_the_repo(
    champion, images, unanswerable, tmp_path
):
    python = isolated_python(tmp_path / "venv")
    work = tmp_path / "work"
    work.mkdir()
    paths = json.dumps([str(p) for p in [*images, *unanswerable]])
    output = run_isolated(python, LOAD_AND_PREDICT, champion["tracking_uri"], paths, cwd=work)
    result = json.loads(output.strip().splitlines()[-1])
    assert "/code/cxr/" in result["cxr_file"] and str(PACKAGE_DIR) not in result["cxr_file"]
    assert {"cxr.model.networks", "cxr.registry.pyfunc_model"} <= set(result["modules"])
    served = pd.DataFrame(result["rows"])
    expected = champion["expected"]
    assert list(served["status"]) == list(expected["status"])
    scored = expected["status"] == "ok"
    assert list(served.loc[scored, "label"]) == list(expected.loc[scored, "label"])
    assert np.allclose(served.loc[scored, "p_pneumonia"], expected.loc[scored, "probability"], atol=1e-6)
    assert_same_domain_verdicts(served, expected)
    assert_same_decisions(served, expected)
    # Stock MLflow, outside this repository: blank, noise, gradient, colour-noise and tiny images never get
    # pneumonia or normal as their decision.
    withheld = served.tail(len(unanswerable))
    assert set(withheld["decision"]) <= {"out_of_domain", "too_small"} and len(withheld) == len(unanswerable)


def assert_same_decisions(served: pd.DataFrame, expected: pd.DataFrame) -> None:
    """The pyfunc's decisions are cxr predict's, and each output carries both probability names."""
    assert list(served["decision"]) == list(expected["decision"])
    assert served["probability"].equals(served["p_pneumonia"])


def assert_same_domain_verdicts(served: pd.DataFrame, expected: pd.DataFrame) -> None:
    scored = expected["status"] == "ok"
    assert list(served.loc[scored, "in_domain"]) == list(expected.loc[scored, "in_domain"])
    assert np.allclose(served.loc[scored, "domain_score"], expected.loc[scored, "domain_score"], rtol=1e-5)
    assert served.loc[~scored, "in_domain"].isna().all()


def test_isolated_python_cannot_import_the_repo(tmp_path):
    python = isolated_python(tmp_path / "venv")
    (tmp_path / "cwd").mkdir()
    (tmp_path / "elsewhere" / "cxr").mkdir(parents=True)  # the check must notice a package that leaks in
    (tmp_path / "elsewhere" / "cxr" / "__init__.py").write_text("")
    assert "ok" in run_isolated(python, "import mlflow\nprint('ok')\n", cwd=tmp_path / "cwd")
    with pytest.raises(AssertionError, match="repository packages importable"):
        run_isolated(python, "", cwd=tmp_path / "elsewhere")


def _answers_ping(port: int, process: subprocess.Popen, log: Path) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"mlflow models serve exited {process.returncode}:\n{log.read_text()[-4000:]}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _invoke(port: int, body: dict) -> list[dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["predictions"]


def test_mlflow_models_serve_answers_like_cxr_predict_without_the_repo(
    champion, images, unanswerable, tmp_path
):
    """`mlflow models serve --env-manager local` from an environment that cannot import this repository."""
    python = isolated_python(tmp_path / "venv")
    port = free_port()
    env = {**isolated_env(python, tmp_path), "MLFLOW_TRACKING_URI": champion["tracking_uri"]}
    command = ["mlflow", "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local"]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: _answers_ping(port, process, log), timeout_s=240, what="the MLflow scoring server")
        encoded = [base64.b64encode(path.read_bytes()).decode() for path in [*images, *unanswerable]]
        split = {"columns": ["image"], "data": [[text] for text in encoded]}
        served = pd.DataFrame(_invoke(port, {"dataframe_split": split}))
        named = pd.DataFrame(
            _invoke(port, {"inputs": {"image": encoded}, "params": {"operating_point": "default"}})
        )
    finally:
        stop_process_group(process.pid)
    expected = champion["expected"]
    assert list(served["status"]) == list(expected["status"])
    scored = expected["status"] == "ok"
    assert list(served.loc[scored, "label"]) == list(expected.loc[scored, "label"])
    assert np.allclose(served.loc[scored, "p_pneumonia"], expected.loc[scored, "probability"], atol=1e-6)
    assert named[["label", "status", "decision"]].equals(served[["label", "status", "decision"]])
    assert_same_domain_verdicts(served, expected)
    assert_same_decisions(served, expected)
    assert set(served.tail(len(unanswerable))["decision"]) <= {"out_of_domain", "too_small"}
    assert set(served["operating_point"]) == {"default"}
