"""`python -m infra.app [--config PATH]`: synthesizes the stack into cdk.out/.

Run by the CDK CLI through cdk.json (`npx aws-cdk deploy`) or directly (`make synth`).
The configuration comes from `-c config=PATH` (a JSON file), else cdk.json's `crm-to-books`
context.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks

from infra.config import CONTEXT_KEY, ConfigError, ServiceConfig, load_config_file, parse_config
from infra.layer import ROOT, build_layer
from infra.stack import CrmToBooksStack


def project_context() -> dict[str, Any]:
    """cdk.json's context: the configuration and CDK's feature flags."""
    context: dict[str, Any] = json.loads((ROOT / "cdk.json").read_text(encoding="utf-8"))["context"]
    return context


def build_app(
    config: ServiceConfig, *, outdir: str | None = None, context: dict[str, Any] | None = None
) -> tuple[App, CrmToBooksStack]:
    """The app with its one stack and cdk-nag's AwsSolutions checks; synthesize with .synth().
    `context` defaults to cdk.json's, so every synthesis (tests too) has its feature flags; the
    CDK CLI's own context (CDK_CONTEXT_JSON) still wins over it."""
    app = App(outdir=outdir, context=project_context() if context is None else context)
    layer_directory, layer_digest = build_layer()
    stack = CrmToBooksStack(
        app,
        config.prefix,
        config=config,
        layer_directory=layer_directory,
        layer_digest=layer_digest,
        # Environment-agnostic unless the CLI knows the account: synth never needs credentials.
        env=Environment(
            account=os.environ.get("CDK_DEFAULT_ACCOUNT"),
            region=os.environ.get("CDK_DEFAULT_REGION"),
        ),
    )
    Validations.of(app).add_plugins(
        AwsSolutionsChecks(app, write_suppressions_to_cloud_formation=True)
    )
    return app, stack


def _config(app_context: dict[str, Any], config_path: str | None) -> ServiceConfig:
    path = config_path or app_context.get("config")
    if path:
        return load_config_file(path)
    if CONTEXT_KEY not in app_context:
        raise ConfigError(f"no configuration: add a {CONTEXT_KEY!r} context to cdk.json")
    return parse_config(app_context[CONTEXT_KEY], f"cdk.json context {CONTEXT_KEY!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.app", description=__doc__)
    parser.add_argument("--config", help="a JSON configuration file (default: cdk.json context)")
    args = parser.parse_args(argv)
    launched_by_cli = "CDK_CONTEXT_JSON" in os.environ or "CDK_OUTDIR" in os.environ
    if launched_by_cli:
        context = json.loads(os.environ.get("CDK_CONTEXT_JSON", "{}"))
        outdir = None  # the CLI chooses
    else:
        context = project_context()
        outdir = str(ROOT / "cdk.out")
    try:
        config = _config(context, args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if outdir:
        shutil.rmtree(outdir, ignore_errors=True)  # stale assets (the layer is ~20 MB) pile up
    app, _ = build_app(config, outdir=outdir)
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
