"""The champion/challenger gate: a challenger replaces the champion only if it is better on the internal test
split and not worse, beyond a stated margin, on any external set (non-inferiority on AUC, and on the share
of the set it can answer alone at the referral targets)."""

from __future__ import annotations

from typing import Any

from cxr.config.params import GateParams


def decide(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    gate: GateParams,
) -> tuple[bool, str]:
    """(promote?, reason) for the challenger's and champion's metrics on the same split."""
    sensitivity = challenger.get("sensitivity")
    # The floor holds for a first model too: "no champion yet" is no reason to serve an unsafe one.
    if sensitivity is None or sensitivity < gate.sensitivity_floor:
        return False, f"challenger sensitivity {sensitivity} below the floor {gate.sensitivity_floor}"
    if champion is None:
        return True, "first model: no champion yet"
    metric = gate.metric
    new, old = challenger.get(metric), champion.get(metric)
    if new is None:
        return False, f"challenger {metric} is undefined on this split"
    if old is not None and new < old + gate.margin:
        return False, f"challenger {metric} {new:.4f} < champion {old:.4f} + margin {gate.margin}"
    return (
        True,
        f"challenger {metric} {new:.4f} >= champion {'n/a' if old is None else f'{old:.4f}'} + margin {gate.margin}",
    )


def decide_outside(
    challenger: dict[str, dict[str, Any]], champion: dict[str, dict[str, Any] | None], margin: float
) -> tuple[bool, str]:
    """(promote?, reason) from each external set's AUC: refused on the first set (by name) where the
    challenger is more than `margin` below the champion; a set the champion was not scored on does not vote."""
    compared = []
    for name in sorted(challenger):
        new, old = challenger[name].get("auc"), (champion.get(name) or {}).get("auc")
        if old is None:
            continue
        if new is None or new < old - margin:
            shown = "undefined" if new is None else f"{new:.4f}"
            return False, (
                f"worse outside on external set {name}: challenger auc {shown} < champion {old:.4f} - margin {margin}"
            )
        compared.append(f"{name} auc {new:.4f} vs champion {old:.4f}")
    return (
        True,
        f"not worse outside (auc margin {margin}): {'; '.join(compared) or 'no external set compared'}",
    )


def decide_coverage_outside(
    challenger: dict[str, dict[str, Any]], champion: dict[str, dict[str, Any] | None], margin: float
) -> tuple[bool, str]:
    """(promote?, reason) from each external set's coverage at target (`coverage_at_target`: the largest share
    of the set a referral band answers with the target rates reached): refused on the first set (by name)
    where the challenger answers more than `margin` less; a set either model lacks it on does not vote (no
    set compared: an empty reason)."""
    compared = []
    for name in sorted(challenger):
        new, old = (
            challenger[name].get("coverage_at_target"),
            (champion.get(name) or {}).get("coverage_at_target"),
        )
        if old is None or new is None:
            continue
        if new < old - margin:
            return False, (
                f"answers less outside on external set {name}: challenger coverage at target {new:.4f} < "
                f"champion {old:.4f} - margin {margin}"
            )
        compared.append(f"{name} coverage at target {new:.4f} vs champion {old:.4f}")
    return True, f"coverage at target (margin {margin}): {'; '.join(compared)}" if compared else ""


def decide_with_outside(
    challenger: dict[str, Any],
    champion: dict[str, Any] | None,
    gate: GateParams,
    outside: tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any] | None]] | None,
) -> tuple[bool, str]:
    """`decide` on the internal test split, then, when it passes against a champion, `decide_outside` on
    `outside` ((challenger, champion) metrics per external set), then `decide_coverage_outside`; the reason
    names what decided."""
    promoted, reason = decide(challenger, champion, gate)
    if not (promoted and champion is not None and outside and outside[0]):
        return promoted, reason
    passed, outside_reason = decide_outside(*outside, gate.external_auc_margin)
    if passed:
        passed, coverage_reason = decide_coverage_outside(*outside, gate.external_coverage_margin)
        outside_reason = (
            "; ".join(filter(None, [outside_reason, coverage_reason])) if passed else coverage_reason
        )
    return passed, f"{reason}; {outside_reason}" if passed else outside_reason
