"""The family shift proxy's split: a whole normal family and a fifth of pneumonia patients held out."""

from __future__ import annotations

from pathlib import Path

from bench.family_shift import link_folders


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG")


def test_family_and_pneumonia_patients_are_held_out_whole(tmp_path):
    data = tmp_path / "data"
    for index in range(10):
        _touch(data / "NORMAL" / f"IM-{index:04d}-0001.png")
        _touch(data / "NORMAL" / f"NORMAL2-IM-{index:04d}-0001.png")
    for patient in range(200):
        for image in range(2):  # two films per patient: they must land on the same side
            _touch(data / "PNEUMONIA" / f"person{patient}_bacteria_{image}.png")

    train, proxy = link_folders(data, "NORMAL2-", tmp_path / "work")

    names = {
        side: {p.name for p in folder.rglob("*.png")} for side, folder in (("train", train), ("proxy", proxy))
    }
    assert not names["train"] & names["proxy"] and len(names["train"] | names["proxy"]) == 20 + 400
    assert {n for n in names["proxy"] if not n.startswith("person")} == {
        f"NORMAL2-IM-{i:04d}-0001.png" for i in range(10)
    }
    held = {n.split("_")[0] for n in names["proxy"] if n.startswith("person")}
    assert 20 <= len(held) <= 60  # about a fifth of 200 patients
    assert all(f"{patient}_bacteria_1.png" in names["proxy"] for patient in held)
    assert (proxy / "PNEUMONIA" / f"{next(iter(held))}_bacteria_0.png").resolve().is_relative_to(data)
