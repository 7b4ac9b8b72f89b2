"""IAM in the test session (a pytest plugin, loaded by tests/conftest.py).

- Every template a local stack needs is synthesized in this process (the CDK's runtime starts
  once for the session, the infra tests included) and cached in `.build/iam/`.
- Every local stack of the session (and `crm-to-books dev` run by a test) appends its
  functions' calls to one session file (`CRM_TO_BOOKS_IAM_RECORD`).
- In-process tests (tests/functional) check the engine's calls with `InProcess`: a botocore hook
  on every new session asks, per call, which function the code plays. A call made under
  `functions/<name>/handler.py` is that function's; other code of the runtime library plays the
  test's function (the import functions by default, `@pytest.mark.iam(plays="redrive")`); a
  call no runtime-library code makes (the test's own set-up and checks) is nobody's and goes
  through. In-process, one `Importer` plays the four import functions, whose roles differ only
  by their own queue: a call is allowed if one of them may make it (the local stack, one
  process per function, checks each exactly). These calls go to the session file too.
- `--iam-revoke HANDLER=ACTION` takes an action away from a function's role for the session
  (in-process checks): how tests/functional/test_iam.py shows that a named test then fails.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3
import botocore.handlers
import pytest

import crm_to_books
from crm_to_books import topology
from crm_to_books_cli.iam import synth
from crm_to_books_cli.iam.enforce import Caller, Enforcer, FileRecorder
from crm_to_books_cli.iam.policy import revoke
from crm_to_books_cli.local.emulator import REGION
from crm_to_books_cli.local.iam import RECORD_ENV, function_callers

ROOT = Path(__file__).resolve().parents[2]
RECORDS = ROOT / ".build" / "iam" / "exercised"
_LIBRARY = str(Path(crm_to_books.__file__).parent) + os.sep
_FUNCTIONS = str(ROOT / "functions") + os.sep
IMPORTER = "importer"


def _played(default: str) -> str | None:
    """The handler folder of the function whose code makes this call: the handler on the
    stack, else the test's function if runtime-library code is on it, else nobody."""
    frame = sys._getframe(2)
    engine = False
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(_FUNCTIONS):
            return Path(path).parent.name
        engine = engine or path.startswith(_LIBRARY)
        frame = frame.f_back  # type: ignore[assignment]
    return default if engine else None


@dataclass
class InProcess:
    """The roles of one configuration's functions, enforced on the engine's in-process calls."""

    config: Mapping[str, Any]
    active: bool = False
    plays: str = IMPORTER
    recording: bool = True
    revoked: set[tuple[str, str]] = field(default_factory=set)
    _template: dict[str, Any] | None = None
    _secrets: dict[str, str] = field(default_factory=dict)
    _callers: dict[str, Caller] = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def names(self) -> topology.Names:
        return topology.Names(self.config["prefix"])

    def callers(self) -> Sequence[Caller]:
        if not self.active or getattr(self._local, "inside", False):
            return ()
        handler_dir = _played(self.plays)
        if handler_dir is None:
            return ()
        callers = self._resolved()
        return [
            callers[self.names.function(spec)]
            for spec in topology.ALL_FUNCTIONS
            if spec.handler_dir == handler_dir
        ]

    def template(self) -> dict[str, Any]:
        with self._lock:  # one synthesis, whichever thread asks first
            if self._template is None:
                self._template = synth.template(self.config)
            return self._template

    def _resolved(self) -> dict[str, Caller]:
        """The roles, resolved again when a connection's secret appears (its ARN's suffix)."""
        with self._lock:
            secrets = self._secret_arns()
            if secrets != self._secrets or not self._callers:
                callers = function_callers(self.template(), self.names.prefix, secrets)
                self._callers = {
                    name: self._without_revoked(caller) for name, caller in callers.items()
                }
                self._secrets = secrets
            return self._callers

    def _without_revoked(self, caller: Caller) -> Caller:
        statements = caller.role.statements
        for handler_dir, action in self.revoked:
            if any(
                self.names.function(s) == caller.function
                for s in topology.ALL_FUNCTIONS
                if s.handler_dir == handler_dir
            ):
                statements = tuple(revoke(statements, action))
        return replace(caller, role=replace(caller.role, statements=statements))

    def _secret_arns(self) -> dict[str, str]:
        """Each connection secret's ARN, as moto gave it, for those that exist now."""
        found = dict(self._secrets)
        missing = [self.names.connection_secret(c) for c in self.config["connections"]]
        missing = [name for name in missing if name not in found]
        if not missing:
            return found
        self._local.inside = True  # these look-ups are not the function's calls
        try:
            client = boto3.client("secretsmanager", region_name=REGION)
            for name in missing:
                try:
                    found[name] = client.describe_secret(SecretId=name)["ARN"]
                except client.exceptions.ResourceNotFoundException:
                    continue
        finally:
            self._local.inside = False
        return found

    @contextmanager
    def enforcing(
        self, plays: str = IMPORTER, enabled: bool = True, record: bool = True
    ) -> Iterator[InProcess]:
        """Check the engine's calls for the duration (a test): a fresh AWS each time.
        `record=False`: a test that is refused on purpose does not count as what the
        function's code needs."""
        self.template()  # here, not in the first of the test's threads to call AWS
        self.active, self.plays, self.recording = enabled, plays, record
        self._secrets, self._callers = {}, {}
        try:
            yield self
        finally:
            self.active, self.plays, self.recording = False, IMPORTER, True

    @contextmanager
    def off(self) -> Iterator[None]:
        """The test's own set-up through engine code, with administrator's rights."""
        active, self.active = self.active, False
        try:
            yield
        finally:
            self.active = active

    @contextmanager
    def playing(self, handler_dir: str) -> Iterator[None]:
        plays, self.plays = self.plays, handler_dir
        try:
            yield
        finally:
            self.plays = plays


def in_process(config: Mapping[str, Any]) -> InProcess:
    """The in-process enforcement for one configuration (one per test suite), hooked on every
    botocore session created from now on."""
    enforcement = InProcess(config)
    recorder = FileRecorder(lambda: record_file() if enforcement.recording else None)
    botocore.handlers.BUILTIN_HANDLERS.extend(Enforcer(enforcement.callers, recorder).handlers())
    return enforcement


# --- the plugin -----------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-iam",
        action="store_true",
        help="leave the in-process tests' engine calls unchecked (to compare run times)",
    )
    parser.addoption(
        "--iam-revoke",
        action="append",
        default=[],
        metavar="HANDLER=ACTION",
        help="take ACTION away from the role of HANDLER's functions (in-process checks)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "iam(plays=HANDLER, enforce=True, record=True): the function whose role a functional "
        "test's engine calls are checked against (default importer); enforce=False for a test "
        "whose engine calls are its own set-up; record=False for one refused on purpose",
    )
    synth.in_process = True
    RECORDS.mkdir(parents=True, exist_ok=True)
    for old in RECORDS.glob("session-*.jsonl"):  # those of sessions that ended
        if not Path(f"/proc/{old.stem.removeprefix('session-')}").exists():
            old.unlink(missing_ok=True)
    os.environ[RECORD_ENV] = str(RECORDS / f"session-{os.getpid()}.jsonl")


def revocations(config: pytest.Config) -> set[tuple[str, str]]:
    found = set()
    for given in config.getoption("--iam-revoke"):
        handler_dir, _, action = given.partition("=")
        if not action:
            raise pytest.UsageError(f"--iam-revoke {given!r}: expected HANDLER=ACTION")
        found.add((handler_dir, action))
    return found


_SUITES = ("functional", "e2e")
_complete = pytest.StashKey[bool]()
_listing = pytest.StashKey[dict[str, set[tuple[str, str, str]]]]()


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items and any(item.path.parent.name in _SUITES for item in items):
        items[0].config.stash[_complete] = False


def pytest_collection_finish(session: pytest.Session) -> None:
    collected = {item.path for item in session.items}
    every = {p for suite in _SUITES for p in (ROOT / "tests" / suite).glob("test_*.py")}
    complete = session.config.stash.get(_complete, True) and every <= collected
    session.config.stash[_complete] = complete


def ran_every_suite(session: pytest.Session) -> bool:
    """Whether this session runs every test of the suites that exercise the roles."""
    return session.config.stash.get(_complete, False)


def report(config: pytest.Config, exercised: dict[str, set[tuple[str, str, str]]]) -> None:
    config.stash[_listing] = exercised


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Per function (handler folder), the calls the suites made, by resource."""
    exercised = config.stash.get(_listing, None)
    if not exercised:
        return
    terminalreporter.section("IAM: what the suites exercised of each role")
    for handler_dir in sorted(exercised):
        by_resource: dict[str, list[str]] = {}
        for resource, action, decision in sorted(exercised[handler_dir]):
            mark = "" if decision == "allow" else f" ({decision})"
            by_resource.setdefault(resource, []).append(action + mark)
        terminalreporter.write_line(f"{handler_dir}:")
        for resource, actions in by_resource.items():
            terminalreporter.write_line(f"  {resource}: {', '.join(actions)}")


def record_file() -> Path:
    return Path(os.environ[RECORD_ENV])


def recorded() -> list[dict[str, str]]:
    path = record_file()
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
