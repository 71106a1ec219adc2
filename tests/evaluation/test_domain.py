"""The domain score (`cxr.evaluation.domain`): fitted on synthetic chest X-rays, it flags what the model never saw."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from cxr.evaluation.domain import (
    COMPONENTS,
    Component,
    DomainGuard,
    DomainScorer,
    Gaussian,
    feature_layer,
    fit_guard,
    image_descriptors,
    image_statistics,
    ledoit_wolf,
)
from tests.helpers.domain_cases import chest_images, out_of_domain_cases

SIZE = 32
QUANTILE = 0.95


@pytest.fixture(scope="module")
def chests(tmp_path_factory) -> dict[str, np.ndarray]:
    """Synthetic chest X-rays split into train / valid / held-out test (never used to fit or tune)."""
    images = chest_images(tmp_path_factory.mktemp("chests"), n=240, size=SIZE)
    images = images[np.random.default_rng(1).permutation(len(images))]
    return {"train": images[:140], "valid": images[140:190], "test": images[190:]}


@pytest.fixture(scope="module")
def fitted(chests) -> tuple[DomainScorer, DomainGuard]:
    """An untrained `default` network's features plus image statistics, fitted on the train images."""
    from cxr.model.networks import build_model

    network = build_model("default", SIZE)
    scorer = DomainScorer(network, layer=feature_layer(network))
    train, valid = (scorer.features(chests[name][..., None])[1] for name in ("train", "valid"))
    return scorer, fit_guard(train, valid, layer=scorer.layer, quantile=QUANTILE)


def flagged_share(scorer: DomainScorer, guard: DomainGuard, images: np.ndarray) -> float:
    return float(np.mean(~guard.in_domain(guard.scores(scorer.features(images[..., None])[1]))))


def test_ledoit_wolf_matches_scikit_learn():
    from sklearn.covariance import ledoit_wolf as reference

    samples = np.random.default_rng(0).normal(size=(40, 6)) @ np.diag([1, 2, 3, 0.5, 0.1, 4])
    centred = samples - samples.mean(axis=0)
    assert np.allclose(ledoit_wolf(centred), reference(samples)[0])


def test_statistics_tell_blank_inverted_and_rotated_images_apart(chests):
    chest = chests["test"][:1] / 255
    stats = {
        "chest": image_statistics(chest),
        "inverted": image_statistics(1 - chest),
        "rotated": image_statistics(np.rot90(chest, axes=(1, 2))),
        "blank": image_statistics(np.full_like(chest, 0.5)),
    }
    assert all(values.shape == (1, 16) for values in stats.values())
    assert stats["blank"][0, 1] == 0 and stats["chest"][0, 1] > 0  # no contrast at all
    assert stats["inverted"][0, 0] == pytest.approx(1 - stats["chest"][0, 0], abs=1e-6)
    # Top/bottom and left/right contrasts trade places when the image turns by 90 degrees.
    assert stats["rotated"][0, 12] == pytest.approx(-stats["chest"][0, 13], abs=1e-6)


def test_threshold_flags_the_chosen_share_of_validation_images(fitted):
    _, guard = fitted
    assert guard.layer == "block4_dropout"  # the last feature map before the head
    assert tuple(part.name for part in guard.components) == tuple(component.name for component in COMPONENTS)
    assert [len(part.mean) for part in guard.components] == [256, 256, 64]
    assert guard.summary["calibration_flagged_share"] <= 1 - QUANTILE + 1e-9
    assert guard.summary["fit_images"] == 140 and guard.summary["calibration_images"] == 50


def test_held_out_chests_pass_and_generated_cases_are_flagged(chests, fitted):
    scorer, guard = fitted
    # Held-out images of the training distribution: about the validation quantile's share is flagged.
    assert flagged_share(scorer, guard, chests["test"]) <= 0.2
    for kind, images in out_of_domain_cases(chests["test"]).items():
        assert flagged_share(scorer, guard, images) == 1.0, kind


def test_guard_survives_json_and_scores_the_same(chests, fitted):
    scorer, guard = fitted
    stored = json.loads(json.dumps({"domain": guard.to_json()}))  # numbers only: nothing pickled
    restored = DomainGuard.from_metadata(stored)
    features = scorer.features(chests["test"][..., None])[1]
    assert np.allclose(restored.scores(features), guard.scores(features))
    assert restored.threshold == guard.threshold and restored.layer == guard.layer
    assert DomainGuard.from_metadata({"threshold": 0.5}) is None  # a model saved before the domain score


def test_guard_stored_without_transforms_scores_as_before(chests, fitted):
    """Models registered before components had a transform and a weight: plain features, equal weights."""
    scorer, guard = fitted
    stored = guard.to_json()
    for part in stored["components"]:
        del part["transform"], part["weight"]
    restored = DomainGuard.from_metadata({"domain": stored})
    features = scorer.features(chests["test"][..., None])[1]
    plain = [replace(part, transform="identity", weight=1.0) for part in guard.components]
    expected = sum(
        part.distance(values) / part.reference for part, values in zip(plain, features, strict=True)
    )
    assert np.allclose(restored.scores(features), expected)
    assert not np.allclose(restored.scores(features), guard.scores(features))


def test_network_features_are_the_channel_means_and_maxima_of_the_feature_map(chests, fitted):
    import keras

    scorer, _ = fitted
    images = chests["test"][:4, ..., None].astype(np.float32)
    feature_map = np.asarray(
        keras.Model(scorer.network.inputs, scorer.network.get_layer(scorer.layer).output)(images)
    )
    features = dict(zip(scorer.feature_names, scorer.features(images)[1], strict=True))
    assert np.allclose(features["network"], feature_map.mean(axis=(1, 2)), atol=1e-5)
    assert np.allclose(features["network_peak"], feature_map.max(axis=(1, 2)), atol=1e-5)
    assert (features["network_peak"] >= features["network"] - 1e-6).all()


def test_guard_stored_with_two_components_reads_only_their_features(chests, fitted):
    """Models registered before `network_peak`: their scorer gives the two features their guard reads."""
    scorer, guard = fitted
    stored = guard.to_json()
    stored["components"] = [part for part in stored["components"] if part["name"] != "network_peak"]
    restored = DomainGuard.from_metadata({"domain": stored})
    old_scorer = DomainScorer(scorer.network, restored)
    assert old_scorer.feature_names == ("network", "image")
    features = old_scorer.features(chests["test"][..., None])[1]
    network, _, image = scorer.features(chests["test"][..., None])[1]
    assert [part.shape for part in features] == [network.shape, image.shape]
    parts = {part.name: part for part in guard.components}
    expected = sum(
        parts[name].weight * parts[name].distance(values) / parts[name].reference
        for name, values in (("network", network), ("image", image))
    )
    assert np.allclose(restored.scores(features), expected)
    assert np.allclose(old_scorer.predict(chests["test"][..., None])[1], expected)


def test_signed_log_features_take_any_sign():
    features = np.random.default_rng(0).normal(size=(50, 3)) * [1, 10, 100]
    part = Gaussian.fit(Component("signed", "signed_log", 1.0), features)
    assert np.isfinite(part.distance(features)).all()
    assert part.distance(np.array([[0.0, 0.0, -1e6]]))[0] > part.distance(features).max()


def test_scorer_without_a_guard_gives_probabilities_only(chests, fitted):
    scorer, _ = fitted
    plain = DomainScorer(scorer.network)
    probabilities, scores = plain.predict(chests["test"][:3, ..., None])
    assert scores is None and probabilities.shape == (3, 2)
    assert np.allclose(probabilities, scorer.features(chests["test"][:3, ..., None])[0], atol=1e-6)


def test_constant_feature_does_not_divide_by_zero():
    features = np.column_stack([np.linspace(0, 1, 20), np.zeros(20)])
    part = Gaussian.fit(Component("constant", "identity", 1.0), features)
    assert np.isfinite(part.distance(features)).all()
    assert part.distance(np.array([[0.5, 1.0]]))[0] > part.distance(features).max()


@pytest.mark.parametrize(("name", "layer"), [("seed", "pool2"), ("mobilenet", "backbone")])
def test_every_architecture_has_a_feature_layer(name, layer):
    from cxr.model.networks import build_model

    assert feature_layer(build_model(name, SIZE)) == layer


def test_descriptors_hold_the_layout_of_the_image():
    image = np.zeros((1, 32, 32), np.uint8)
    image[:, :, :16] = 255  # left half white
    descriptors = image_descriptors(image)
    assert descriptors.shape == (1, 64)
    thumbnail, rows, columns = descriptors[0, :16], descriptors[0, 16:32], descriptors[0, 32:48]
    assert np.allclose(thumbnail.reshape(4, 4), [[1, 1, 0, 0]] * 4)
    assert np.allclose(rows, 0.5) and np.allclose(columns, [1] * 8 + [0] * 8)
    assert np.allclose(descriptors[0, 48:], image_statistics(image / 255)[0])
