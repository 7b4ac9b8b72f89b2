"""Where the service runs, for the operator commands: a local stack or a deployed one.

Resolution, first match wins:
1. `--api-url`/`--aws-endpoint` (or, without `--stack`, env `CRM_TO_BOOKS_API_URL`/
   `AWS_ENDPOINT_URL`), or `--local` (defaults http://127.0.0.1:3000 and
   http://127.0.0.1:4566): the local stack (`make dev`);
2. `--stack NAME` (env `CRM_TO_BOOKS_STACK`, default `crm-to-books-dev`): the deployed stack's
   CloudFormation outputs, with the usual AWS profile and region.

Every command is wrapped by `command()`: a `CliError` or an AWS/credentials problem becomes one
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

from crm_to_books import topology
from crm_to_books.entities import KINDS

LOCAL_API_URL = "http://127.0.0.1:3000"
LOCAL_AWS_ENDPOINT = "http://127.0.0.1:4566"
LOCAL_REGION = "us-east-1"
DEFAULT_STACK = "crm-to-books-dev"
BAD_CREDENTIALS = {
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "InvalidSignatureException",
    "AuthFailure",
}
_BOTO_CONFIG = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5)


class CliError(Exception):
    """A problem the operator can fix: printed as one line, exit code 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The target options every operator command takes."""
    group = parser.add_argument_group("target (local stack or deployed stack)")
    group.add_argument(
        "--local",
        action="store_true",
        help=f"the local stack (make dev) at {LOCAL_API_URL} and {LOCAL_AWS_ENDPOINT}",
    )
    group.add_argument("--api-url", help="the API's base URL (env CRM_TO_BOOKS_API_URL)")
    group.add_argument(
        "--aws-endpoint", help="an AWS emulator's endpoint URL (env AWS_ENDPOINT_URL)"
    )
    group.add_argument(
        "--stack", help=f"deployed stack name (env CRM_TO_BOOKS_STACK, default {DEFAULT_STACK})"
    )
    group.add_argument(
        "--prefix",
        help=f"resource name prefix (default: the stack's, or {topology.DEFAULT_PREFIX})",
    )
    group.add_argument("--profile", help="AWS profile")
    group.add_argument("--region", help="AWS region")
    group.add_argument(
        "--api-key", help="send this API key as x-api-key (env CRM_TO_BOOKS_API_KEY)"
    )


@dataclass
class Target:
    """The resolved service: its API, its AWS resources' names, and a boto3 session."""

    session: boto3.Session
    names: topology.Names
    api_url: str | None
    endpoint_url: str | None = None  # an emulator's; None: AWS itself
    description: str = ""
    sign: bool = True  # SigV4 on API calls (IAM auth)
    api_key: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def region(self) -> str:
        return self.session.region_name or LOCAL_REGION

    @property
    def local(self) -> bool:
        return self.endpoint_url is not None

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(
                service,  # type: ignore[call-overload]
                endpoint_url=self.endpoint_url,
                config=_BOTO_CONFIG,
            )
        return self._clients[service]

    def invoke(self, function: str, payload: dict[str, Any], read_timeout: float) -> Any:
        """Invoke one of the stack's functions (by its physical name) and wait for its answer:
        Lambda on AWS; the local stack's own Invoke API on its HTTP port (`make dev`)."""
        if self.local:
            endpoint = self.require_api()
        client = self.session.client(
            "lambda",
            endpoint_url=endpoint if self.local else None,
            config=Config(
                retries={"mode": "standard", "max_attempts": 1},
                connect_timeout=5,
                read_timeout=read_timeout,
            ),
        )
        try:
            answer = client.invoke(FunctionName=function, Payload=json.dumps(payload).encode())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise CliError(
                    f"function {function} not found{self._where()}: is the stack deployed "
                    "with this version (check --prefix/--stack)?"
                ) from None
            raise
        body = json.loads(answer["Payload"].read() or b"null")
        if answer.get("FunctionError"):
            said = body.get("errorMessage") if isinstance(body, dict) else body
            raise CliError(f"function {function} failed: {said} (see its logs)")
        return body

    def require_api(self) -> str:
        if not self.api_url:
            raise CliError(
                "no API URL: pass --api-url (env CRM_TO_BOOKS_API_URL), --local or --stack"
            )
        return self.api_url

    def queue_url(self, kind: str) -> str:
        output = self.outputs.get(f"{kind.title()}QueueUrl")
        return output or self._queue_url(self.names.queue(kind))

    def dlq_url(self, kind: str) -> str:
        return self._queue_url(self.names.dlq(kind))

    def _queue_url(self, name: str) -> str:
        sqs = self.client("sqs")
        try:
            return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])
        except sqs.exceptions.QueueDoesNotExist:
            raise CliError(
                f"queue {name} not found in {self.region}{self._where()}: check --prefix/--stack"
            ) from None

    def _where(self) -> str:
        return f" at {self.endpoint_url}" if self.endpoint_url else ""


def resolve(args: argparse.Namespace) -> Target:
    # Flags before the environment: an explicit --stack is not overridden by URL variables.
    env = {} if args.stack else os.environ
    api_url = args.api_url or env.get("CRM_TO_BOOKS_API_URL") or None
    endpoint = args.aws_endpoint or env.get("AWS_ENDPOINT_URL") or None
    api_key = args.api_key or os.environ.get("CRM_TO_BOOKS_API_KEY") or None
    if args.local:
        api_url, endpoint = api_url or LOCAL_API_URL, endpoint or LOCAL_AWS_ENDPOINT
    if api_url or endpoint:
        return _explicit(args, api_url, endpoint, api_key)
    stack = args.stack or os.environ.get("CRM_TO_BOOKS_STACK") or DEFAULT_STACK
    return _deployed(args, stack, api_key)


def _explicit(
    args: argparse.Namespace, api_url: str | None, endpoint: str | None, api_key: str | None
) -> Target:
    if endpoint:
        # An emulator takes any credentials: never send a developer's real ones to it.
        session = boto3.Session(
            aws_access_key_id="local",
            aws_secret_access_key="local",  # noqa: S106 (the emulator's dummy credentials)
            region_name=args.region or LOCAL_REGION,
        )
    else:
        session = aws_session(args)
    return Target(
        session=session,
        names=topology.Names(args.prefix or topology.DEFAULT_PREFIX),
        api_url=api_url.rstrip("/") if api_url else None,
        endpoint_url=endpoint.rstrip("/") if endpoint else None,
        description=f"API {api_url or '-'}, AWS {endpoint or 'default endpoint'}",
        sign=endpoint is None and api_key is None,
        api_key=api_key,
    )


def aws_session(args: argparse.Namespace) -> boto3.Session:
    """The operator's AWS session: --profile and --region, else the usual environment."""
    try:
        session = boto3.Session(profile_name=args.profile, region_name=args.region)
        if not session.region_name and os.environ.get("AWS_REGION"):
            # The AWS CLI and Lambda use AWS_REGION; boto3 reads only AWS_DEFAULT_REGION.
            session = boto3.Session(profile_name=args.profile, region_name=os.environ["AWS_REGION"])
    except ProfileNotFound as exc:
        raise CliError(f"AWS profile not found: {exc}") from None
    if not session.region_name:
        raise CliError("no AWS region: pass --region or set AWS_REGION (or the profile's region)")
    return session


def _deployed(args: argparse.Namespace, stack: str, api_key: str | None) -> Target:
    session = aws_session(args)
    cloudformation = session.client("cloudformation", config=_BOTO_CONFIG)
    try:
        described = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ValidationError":
            raise CliError(
                f"stack {stack} not found in {session.region_name}: "
                "deploy it or pass --stack/--local"
            ) from None
        raise
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    bus = outputs.get("EventBusName", "")
    prefix = args.prefix or (bus.removesuffix("-bus") if bus.endswith("-bus") else stack)
    target = Target(
        session=session,
        names=topology.Names(prefix),
        api_url=outputs.get("ApiUrl", "").rstrip("/") or None,
        description=f"stack {stack} in {session.region_name}",
        api_key=api_key,
        outputs=outputs,
    )
    if api_key is None and "ApiKeyId" in outputs:
        target.api_key = _api_key_value(target, outputs["ApiKeyId"])
    target.sign = target.api_key is None
    return target


def _api_key_value(target: Target, key_id: str) -> str:
    try:
        key = target.client("apigateway").get_api_key(apiKey=key_id, includeValue=True)
    except ClientError as exc:
        raise CliError(
            f"the API takes an API key and reading key {key_id} failed "
            f"({exc.response.get('Error', {}).get('Code')}): pass --api-key or set "
            "CRM_TO_BOOKS_API_KEY"
        ) from None
    return str(key["value"])


def kinds(kind: str | None, all_kinds: bool = False) -> tuple[str, ...]:
    """The kinds a command acts on: one, or all of them."""
    if all_kinds or kind is None:
        return KINDS
    if kind not in KINDS:
        raise CliError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    return (kind,)


def describe_aws_error(exc: Exception) -> str:
    """One line for an AWS failure, naming what to fix."""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return "no AWS credentials: configure a profile (--profile or AWS_PROFILE) or pass --local"
    if isinstance(exc, NoRegionError):
        return "no AWS region: pass --region or set AWS_REGION"
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach AWS at {exc.kwargs.get('endpoint_url', '?')}: is the stack running?"
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        if code in BAD_CREDENTIALS:
            return (
                f"AWS refused the credentials ({code}): {message}. Refresh them or pick --profile"
            )
        if code in {"AccessDenied", "AccessDeniedException"}:
            return f"AWS denied access ({code}): {message}"
        return f"AWS answered {code}: {message}".rstrip(": ")
    return f"AWS call failed: {exc}"


def command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: known failures become one line on stderr and exit code 2."""

    @functools.wraps(run)
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except CliError as exc:
            message = str(exc)
        except (BotoCoreError, ClientError) as exc:
            message = describe_aws_error(exc)
        print(f"crm-to-books {args.command}: {message}", file=sys.stderr)
        return 2

    return wrapped
