"""The `cxr` options and sub-command about data from other sites: external sets of a run, site calibration."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.output import print_json


def external_options(args: argparse.Namespace) -> dict[str, Any]:
    """RetrainConfig fields from `--external NAME=DIR`, `--calibrate-on` and `--external-auc-margin`."""
    options: dict[str, Any] = {}
    if args.external or args.calibrate_on:
        options["external"] = {"sets": args.external, "calibrate_on": args.calibrate_on}
    if args.external_auc_margin is not None:
        options["gate"] = {"external_auc_margin": args.external_auc_margin}
    return options


def print_external(external: dict[str, Any]) -> None:
    for name, scores in external.items():
        shown = [
            f"{role} auc {score['metrics']['auc']:.3f} sensitivity {score['metrics']['sensitivity']:.3f} "
            f"specificity {score['metrics']['specificity']:.3f}"
            for role, score in (("challenger", scores["challenger"]), ("champion", scores["champion"]))
            if score
        ]
        print(f"external {name} ({scores['n']} images): {'; '.join(shown)}")


def cmd_calibrate(args: argparse.Namespace) -> int:
    from cxr.core.state_folder import default_tracking_uri
    from cxr.registry.site_calibration import calibrate_registered

    result = calibrate_registered(
        args.model,
        Path(args.data),
        args.name,
        target_sensitivity=args.target_sensitivity,
        tracking_uri=default_tracking_uri(),
        make_default=args.make_default,
    )
    if args.json:
        print_json(result)
    else:
        _print_calibration(result)
    return 0


def _print_calibration(result: dict[str, Any]) -> None:
    print(
        f"{result['model_uri']}: v{result['calibrated_from']} with site {result['site']}'s points "
        f"({result['n']} images){', now champion' if result['champion'] else ''}"
    )
    for name, point in result["operating_points"].items():
        print(
            f"  {name}: threshold {point['threshold']:.4f}, sensitivity {point['sensitivity']:.3f}, "
            f"specificity {point['specificity']:.3f} on the site's images"
        )
    if result.get("referral"):
        from cxr.model.referral import ReferralBand
        from cxr.model.referral_fit import describe

        print(f"  referral band: {describe(ReferralBand.model_validate(result['referral']))}")
