"""The local stack's IAM: each function calls AWS with its own role, from the synthesized template.

The template comes from the real CDK app for the local stack's configuration (prefix,
organizations, connections), cached by `crm_to_books_cli.iam.synth`; its synthesis starts in a
child process as the stack starts and runs while the emulator comes up. Each function's role is
resolved to the emulator's ARNs (account 123456789012, us-east-1, the secrets' real random
suffixes) and written to a file its containers read (`LOCAL_IAM_ROLE_FILE`, installed by the
container's bootstrap). An import function's SQS event source polls with that function's role,
as Lambda's does.

With `record` (or `CRM_TO_BOOKS_IAM_RECORD` in the environment, unless `record` is False) every
(function, action, resource, decision) is appended once to that JSON-lines file: what the test
suites exercised.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from crm_to_books import topology
from crm_to_books.settings import Organization
from crm_to_books_cli.iam import synth
from crm_to_books_cli.iam.calls import Where
from crm_to_books_cli.iam.cfn import Env, Resolved, Role
from crm_to_books_cli.iam.enforce import (
    ROLE_FILE_ENV,
    Caller,
    Enforcer,
    FileRecorder,
    write_role_file,
)
from crm_to_books_cli.local.emulator import ACCOUNT_ID, PARTITION, REGION

RECORD_ENV = "CRM_TO_BOOKS_IAM_RECORD"
ENV = Env(PARTITION, REGION, ACCOUNT_ID)


def function_callers(
    template: Mapping[str, Any], prefix: str, secret_arns: Mapping[str, str]
) -> dict[str, Caller]:
    """Each function's caller (by physical name): its role resolved to the emulator's ARNs."""
    resolved = Resolved(template, ENV, stack_name=prefix)
    secrets = {
        lid: secret_arns[resolved.name(lid)]
        for lid in resolved.of_type("AWS::SecretsManager::Secret")
        if resolved.name(lid) in secret_arns
    }
    resolved = Resolved(template, ENV, stack_name=prefix, arns=secrets)
    where = Where(PARTITION, REGION, ACCOUNT_ID, secret_arns.get)
    return {name: Caller(name, role, where) for name, role in resolved.function_roles().items()}


class LocalIam:
    def __init__(
        self,
        names: topology.Names,
        organizations: Mapping[str, Organization],
        connections: Sequence[str],
        record: Path | Literal[False] | None = None,
    ) -> None:
        self.names = names
        config = synth.local_config(
            names.prefix,
            {org: o.model_dump(mode="json") for org, o in organizations.items()},
            connections,
        )
        self._synthesis = synth.Synthesis(config)  # starts now, if not cached
        env_record = os.environ.get(RECORD_ENV)
        from_env = Path(env_record) if env_record else None
        self.record = None if record is False else (record or from_env)
        self._directory: Path | None = None
        self._callers: dict[str, Caller] = {}
        self._template_callers: dict[str, Caller] = {}
        self._secrets: dict[str, str] = {}
        self._lock = threading.Lock()

    @property
    def cached(self) -> bool:
        return self._synthesis.hit

    def start(self, secret_arns: Mapping[str, str]) -> None:
        """Wait for the template and write each function's role where its containers read it."""
        template = self._synthesis.template()
        self._secrets = dict(secret_arns)
        self._callers = function_callers(template, self.names.prefix, secret_arns)
        self._template_callers = dict(self._callers)
        expected = {self.names.function(spec) for spec in topology.ALL_FUNCTIONS}
        if set(self._callers) != expected:
            raise RuntimeError(
                f"the template's functions {sorted(self._callers)} are not the local stack's "
                f"{sorted(expected)}"
            )
        self._directory = Path(tempfile.mkdtemp(prefix="crm-to-books-iam-"))
        for caller in self._callers.values():
            self._write(caller)

    def _write(self, caller: Caller) -> None:
        # What a changed role did is not what the template's role exercises: not recorded.
        as_deployed = caller == self._template_callers[caller.function]
        record = self.record if as_deployed else None
        write_role_file(self.role_file(caller.function), caller, self._secrets, record)

    def role_file(self, function: str) -> Path:
        assert self._directory is not None, "start() first"
        return self._directory / f"{function}.json"

    def environment(self, function: str) -> dict[str, str]:
        """What a container of `function` needs to enforce its role."""
        return {ROLE_FILE_ENV: str(self.role_file(function))}

    def caller(self, function: str) -> Caller:
        with self._lock:
            return self._callers[function]

    def attach(self, client: Any, function: str) -> None:
        """Check a client's calls against `function`'s role (an event source polls with it)."""

        def record() -> Path | None:
            as_deployed = self.caller(function) == self._template_callers[function]
            return self.record if as_deployed else None

        Enforcer(lambda: (self.caller(function),), FileRecorder(record)).attach(client.meta.events)

    def replace_statements(self, function: str, statements: Sequence[Mapping[str, Any]]) -> None:
        """Give `function`'s role these statements, as a deploy of a changed policy would: its
        running containers and its event source use them from their next call."""
        with self._lock:
            old = self._callers[function]
            role = Role(old.role.logical_id, old.role.name, old.role.arn, tuple(statements))
            self._callers[function] = Caller(old.function, role, old.where)
            self._write(self._callers[function])

    def stop(self) -> None:
        self._synthesis.cancel()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
