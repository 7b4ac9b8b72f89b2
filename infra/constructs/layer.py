"""The Lambda layer: crm_to_books and its runtime dependencies, as built by `infra.layer`."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import AssetHashType
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

RUNTIME = lambda_.Runtime.PYTHON_3_13  # infra.layer.PYTHON_VERSION and .python-version too
RUNTIME_REASON = (
    "Python 3.13, not the latest: every test runs on the minor version Lambda runs, and 3.13 is "
    "the newest the build machines have (docs/architecture.md)"
)
ARCHITECTURE = lambda_.Architecture.ARM_64


class CoreLayer(Construct):
    def __init__(self, scope: Construct, id: str, *, directory: Path, digest: str) -> None:
        super().__init__(scope, id)
        self.layer = lambda_.LayerVersion(
            self,
            "Layer",
            description="crm_to_books runtime library and its pinned dependencies",
            # The build is keyed by its inputs: no need to fingerprint ~20 MB on every synth.
            code=lambda_.Code.from_asset(
                str(directory), asset_hash=digest, asset_hash_type=AssetHashType.CUSTOM
            ),
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
        )
