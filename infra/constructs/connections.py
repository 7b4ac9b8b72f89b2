"""One Secrets Manager secret per Zoho connection, created with placeholders.

`crm-to-books connect --connection NAME` writes the real values (it exchanges a grant code).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from crm_to_books.topology import Names
from infra.constructs.nag import acknowledge

SECRET_KEYS = ("client_id", "client_secret", "refresh_token", "accounts_url")


class Connections(Construct):
    def __init__(
        self, scope: Construct, id: str, *, names: Names, connections: Iterable[str]
    ) -> None:
        super().__init__(scope, id)
        self.secrets: dict[str, secretsmanager.Secret] = {}
        self.secret_ids: dict[str, str] = {}
        for name in connections:
            secret_name = names.connection_secret(name)
            secret = secretsmanager.Secret(
                self,
                f"Connection-{name}",
                secret_name=secret_name,
                description=f"Zoho OAuth connection {name!r}: run crm-to-books connect to fill",
                # Secrets Manager must generate something; the real values come from `connect`.
                generate_secret_string=secretsmanager.SecretStringGenerator(
                    secret_string_template=json.dumps(dict.fromkeys(SECRET_KEYS, "")),
                    generate_string_key="placeholder",
                ),
            )
            acknowledge(
                secret,
                "Zoho refresh tokens do not expire on a schedule; `crm-to-books connect` "
                "replaces them (a rotation Lambda cannot obtain a Zoho grant code)",
                "AwsSolutions-SMG4",
            )
            self.secrets[name] = secret
            self.secret_ids[name] = secret_name

    def grant_read(self, grantee: iam.IGrantable, connections: Iterable[str]) -> None:
        for name in sorted(set(connections)):
            self.secrets[name].grant_read(grantee)
