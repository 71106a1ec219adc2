"""Timings that survive a shared, noisy machine: training throughput, and calls timed best-of-interleaved.

Every epoch is timed whole (its start-up, e.g. iterator creation and shuffle-buffer filling, and
any waiting for input included). Other processes' load only ever slows an epoch down, so the
fastest of several interleaved epochs is the best estimate of this machine's rate; the median
epoch is reported beside it. (Per-step minima would be biased: with a prefetching producer, a step
that finds its batch ready is fast because an earlier step waited.)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import keras


class StepClock(keras.callbacks.Callback):
    """Wall seconds of every training step, one list per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[list[float]] = []
        self._last = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs.append([])
        self._last = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        self.epochs[-1].append(now - self._last)
        self._last = now


def fit_step_times(model: keras.Model, *, epochs: int, **fit_kwargs: Any) -> list[list[float]]:
    """Train `model` for `epochs` epochs; per epoch, the seconds of each step."""
    clock = StepClock()
    model.fit(epochs=epochs, callbacks=[clock], verbose=0, **fit_kwargs)
    return clock.epochs


def compare_training(
    runs: dict[str, tuple[keras.Model, dict[str, Any]]], *, epochs: int, repeats: int
) -> dict[str, list[list[float]]]:
    """Step times of each (model, fit arguments), after one untimed warm-up epoch each (tracing).

    The timed fits go round-robin, `repeats` times, so load from other processes is spread evenly.
    """
    for model, fit_kwargs in runs.values():
        model.fit(epochs=1, verbose=0, **fit_kwargs)
    samples: dict[str, list[list[float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (model, fit_kwargs) in runs.items():
            samples[name] += fit_step_times(model, epochs=epochs, **fit_kwargs)
    return samples


def throughput(epochs: list[list[float]], images_per_epoch: int) -> dict[str, Any]:
    """img/s of the fastest epoch and of the median epoch."""
    epoch_seconds = [sum(steps) for steps in epochs]
    return {
        "img_s": round(images_per_epoch / min(epoch_seconds), 2),
        "median_epoch_img_s": round(images_per_epoch / statistics.median(epoch_seconds), 2),
        "epochs_timed": len(epochs),
    }


def best_of_interleaved(
    calls: dict[str, Callable[[], Any]], *, repeats: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """(fastest wall seconds of each call over `repeats` rounds, each call's last result). The calls take turns
    within a round, so load from other processes falls on all of them alike."""
    best = dict.fromkeys(calls, float("inf"))
    results: dict[str, Any] = {}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            results[name] = call()
            best[name] = min(best[name], time.perf_counter() - started)
    return best, results
