"""One Secrets Manager secret per Zoho connection, created with placeholders.

`crm-to-books connect --connection NAME` writes the real values (it exchanges a grant code).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from crm_to_books.topology import Names
from infra.constructs.nag import acknowledge
from infra.constructs.removal import KEEP_NAMED

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
                # The refresh token outlives the stack; and a deleted secret's name stays taken
                # for its recovery window (7 to 30 days), which would block a redeploy.
                removal_policy=KEEP_NAMED,
            )
            acknowledge(
                secret,
                "Zoho refresh tokens do not expire on a schedule; `crm-to-books connect` "
                "replaces them (a rotation Lambda cannot obtain a Zoho grant code)",
                "AwsSolutions-SMG4",
            )
            self.secrets[name] = secret
            self.secret_ids[name] = secret_name

    def arns(self, connections: Iterable[str]) -> list[str]:
        return [self.secrets[name].secret_arn for name in sorted(set(connections))]
