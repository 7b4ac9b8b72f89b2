"""The inside of one local Lambda container: `python -P bootstrap.py FD`.

Standard library only, and run by path (not imported from the package) so the container sees
what Lambda would: its own environment, the function's folder and the layer on `PYTHONPATH`.
It imports the handler (`_HANDLER`: `module.function`) once, the init phase, then serves
invocations one at a time over the socket FD: one JSON line in (`request_id`, `deadline_ms`,
`event`), one JSON line out (`result`, or `error` shaped like Lambda's error payload).
stdout and stderr are the function's log.

With `LOCAL_IAM_ROLE_FILE` set, before the handler is imported, every AWS call the function
makes is checked against its role (`crm_to_books_cli.iam.enforce`), the one import from outside
the function's own path: Lambda's runtime, not the function, is where IAM sits.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any


class LambdaContext:
    """What Lambda passes as `context`, with the attributes Powertools reads."""

    def __init__(self, request_id: str, deadline_ms: int) -> None:
        env = os.environ
        self.function_name = env["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = env["AWS_LAMBDA_FUNCTION_VERSION"]
        self.memory_limit_in_mb = int(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"])
        self.invoked_function_arn = env["LOCAL_LAMBDA_FUNCTION_ARN"]
        self.log_group_name = env["AWS_LAMBDA_LOG_GROUP_NAME"]
        self.log_stream_name = env["AWS_LAMBDA_LOG_STREAM_NAME"]
        self.aws_request_id = request_id
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _error(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    return {
        "errorMessage": str(exc),
        "errorType": error_type or type(exc).__name__,
        "stackTrace": traceback.format_tb(exc.__traceback__),
    }


def _log_error(error: dict[str, Any], request_id: str | None = None) -> None:
    # Lambda logs an uncaught error as one JSON line on the function's log.
    line = {**error, "requestId": request_id} if request_id else error
    print(json.dumps(line), file=sys.stderr, flush=True)


def main(fd: int) -> int:
    # Ctrl-C in the terminal reaches the whole process group: the local stack, not the
    # container, decides when a container stops (it closes the socket, then terminates).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = socket.socket(fileno=fd)
    reader = channel.makefile("rb")

    def send(message: dict[str, Any]) -> None:
        channel.sendall(json.dumps(message).encode() + b"\n")

    def failed(init_error: dict[str, Any]) -> int:
        _log_error(init_error)
        send({"init_error": init_error})
        return 1

    if os.environ.get("LOCAL_IAM_ROLE_FILE"):
        try:
            from crm_to_books_cli.iam.enforce import install_from_env

            install_from_env()
        except Exception as exc:
            init_error = _error(exc, "Local.IamRoleError")
            init_error["errorMessage"] = f"Unable to enforce the function's role: {exc}"
            return failed(init_error)
    module_name, _, function_name = os.environ["_HANDLER"].rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:
        init_error = _error(exc, "Runtime.ImportModuleError")
        init_error["errorMessage"] = f"Unable to import module '{module_name}': {exc}"
        return failed(init_error)
    send({"ready": True})

    for line in reader:
        request = json.loads(line)
        context = LambdaContext(request["request_id"], request["deadline_ms"])
        error: dict[str, Any] = {}
        try:
            result = handler(request["event"], context)
        except Exception as exc:
            error = _error(exc)
        else:
            try:
                payload = json.dumps({"result": result})
            except (TypeError, ValueError) as exc:
                error = _error(exc, "Runtime.MarshalError")
        if error:
            _log_error(error, request["request_id"])
            payload = json.dumps({"error": error})
        sys.stdout.flush()
        sys.stderr.flush()
        channel.sendall(payload.encode() + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
