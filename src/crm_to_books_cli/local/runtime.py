"""A local Lambda runtime: each function runs in worker processes ("containers"), like Lambda.

A container is a separate Python process (`bootstrap.py`) with the function's own environment.
It imports the handler once and serves one invocation at a time. A pool per function starts
containers on demand (cold starts) up to `max_containers` and reuses warm ones; a container that
dies or times out is dropped and the invocation it was running fails, as on Lambda.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

BOOTSTRAP = Path(__file__).with_name("bootstrap.py")
INIT_TIMEOUT_SECONDS = 10.0 + 20.0  # Lambda's init limit, plus a cold machine's first imports
STOP_GRACE_SECONDS = 2.0

LogSink = Callable[[str, str], None]  # (function name, one line of its output)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Invocation:
    """One invocation's outcome: `result` (the handler's return value) or Lambda's `error`."""

    request_id: str
    result: Any = None
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class FunctionConfig:
    """What a container of one function is made of."""

    name: str  # the physical function name
    code_dir: Path  # holds handler.py
    layer_dirs: tuple[Path, ...]
    environment: Mapping[str, str]
    timeout_seconds: float
    memory_mb: int
    arn: str
    handler: str = "handler.handler"  # <module>.<function>, as Lambda's handler setting
    max_containers: int = 10

    def container_env(self, stream: str) -> dict[str, str]:
        return {
            **self.environment,
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": stream,
            "LOCAL_LAMBDA_FUNCTION_ARN": self.arn,
            "LAMBDA_TASK_ROOT": str(self.code_dir),
            "_HANDLER": self.handler,
            "PYTHONPATH": ":".join(str(p) for p in (self.code_dir, *self.layer_dirs)),
            "PYTHONUNBUFFERED": "1",
        }


def _error(error_type: str, message: str) -> dict[str, Any]:
    return {"errorType": error_type, "errorMessage": message, "stackTrace": []}


class Container:
    """One worker process of one function."""

    def __init__(self, config: FunctionConfig, sink: LogSink) -> None:
        self.config = config
        stream = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"
        self._socket, child = socket.socketpair()
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and bootstrap
            [sys.executable, "-P", str(BOOTSTRAP), str(child.fileno())],
            env=config.container_env(stream),
            cwd=config.code_dir,
            pass_fds=(child.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        child.close()
        self._reader = self._socket.makefile("rb")
        self._log_threads = [
            threading.Thread(target=self._pump, args=(s, sink), daemon=True)
            for s in (self.process.stdout, self.process.stderr)
        ]
        for thread in self._log_threads:
            thread.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _pump(self, stream: IO[bytes] | None, sink: LogSink) -> None:
        assert stream is not None
        for raw in stream:
            sink(self.config.name, raw.decode(errors="replace").rstrip("\r\n"))

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message, or None if the process died or went quiet past `timeout`."""
        self._socket.settimeout(max(timeout, 0.001))
        try:
            line = self._reader.readline()
        except (OSError, ValueError):  # timed out, or closed by stop()
            return None
        return json.loads(line) if line else None

    def init(self) -> dict[str, Any] | None:
        """Wait for the handler to be imported; Lambda's error if init failed."""
        message = self._receive(INIT_TIMEOUT_SECONDS)
        if message and message.get("ready"):
            return None
        self.kill()
        if message and "init_error" in message:
            return dict(message["init_error"])
        return _error("Runtime.ExitError", f"Runtime exited during init: {self._exit()}")

    def invoke(self, event: Any, request_id: str) -> Invocation:
        timeout = self.config.timeout_seconds
        deadline_ms = int((time.time() + timeout) * 1000)
        request = {"request_id": request_id, "deadline_ms": deadline_ms, "event": event}
        try:
            self._socket.sendall(json.dumps(request).encode() + b"\n")
        except OSError:
            return Invocation(request_id, error=self._died())
        reply = self._receive(timeout + 0.5)
        if reply is None:
            if self.alive:
                self.kill()
                message = f"Task timed out after {timeout:.2f} seconds"
                return Invocation(request_id, error=_error("Sandbox.Timedout", message))
            return Invocation(request_id, error=self._died())
        if "error" in reply:
            return Invocation(request_id, error=reply["error"])
        return Invocation(request_id, result=reply.get("result"))

    def _died(self) -> dict[str, Any]:
        return _error("Runtime.ExitError", f"Runtime exited with error: {self._exit()}")

    def _exit(self) -> str:
        try:
            code = self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.process.wait()
        return f"signal {-code}" if code < 0 else f"exit status {code}"

    def kill(self) -> None:
        if self.alive:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """Terminate (Lambda's shutdown), kill after a grace period, release the pipes."""
        if self.alive:
            self.process.terminate()
        try:
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for thread in self._log_threads:
            thread.join(timeout=STOP_GRACE_SECONDS)
        for stream in (self.process.stdout, self.process.stderr, self._reader, self._socket):
            if stream is not None:
                stream.close()


class RuntimeStopped(RuntimeError):
    """The runtime is stopping: no invocation starts."""


class FunctionPool:
    """The containers of one function: warm ones reused (most recent first), new ones on demand."""

    def __init__(self, config: FunctionConfig, sink: LogSink) -> None:
        self.config = config
        self._sink = sink
        self._idle: list[Container] = []
        self._all: set[Container] = set()
        self._starting = 0
        self._closed = False
        self._changed = threading.Condition()

    @property
    def name(self) -> str:
        return self.config.name

    def pids(self) -> list[int]:
        with self._changed:
            return [c.pid for c in self._all]

    def invoke(self, event: Any) -> Invocation:
        """Run one invocation, waiting for a free container if all are busy."""
        request_id = str(uuid.uuid4())
        container = self._checkout()
        if container is None:
            container, init_error = self._start_container()
            if init_error is not None:
                return Invocation(request_id, error=init_error)
        invocation = container.invoke(event, request_id)
        self._checkin(container)
        if not invocation.ok:
            log.debug("%s %s failed: %s", self.name, request_id, invocation.error)
        return invocation

    def _checkout(self) -> Container | None:
        """A warm container, or None when the caller may start one."""
        with self._changed:
            while True:
                if self._closed:
                    raise RuntimeStopped(self.name)
                while self._idle:
                    container = self._idle.pop()
                    if container.alive:
                        return container
                    self._all.discard(container)  # killed while idle, like a reclaimed one
                if len(self._all) + self._starting < self.config.max_containers:
                    self._starting += 1
                    return None
                self._changed.wait()

    def _start_container(self) -> tuple[Container, dict[str, Any] | None]:
        try:
            container = Container(self.config, self._sink)
        except BaseException:
            with self._changed:
                self._starting -= 1
                self._changed.notify()
            raise
        with self._changed:
            self._starting -= 1
            self._all.add(container)
        init_error = container.init()
        if init_error is not None:
            self._checkin(container)  # dead now: dropped
        return container, init_error

    def _checkin(self, container: Container) -> None:
        with self._changed:
            if container.alive and not self._closed:
                self._idle.append(container)
            else:
                self._all.discard(container)
            self._changed.notify()
        if not container.alive:
            container.stop()  # reap it; the next invocation starts a new one

    def stop(self) -> None:
        with self._changed:
            self._closed = True
            containers = list(self._all)
            self._all.clear()
            self._idle.clear()
            self._changed.notify_all()
        for container in containers:
            container.stop()


class Runtime:
    """The pools of every function, by physical name."""

    def __init__(self, configs: list[FunctionConfig], sink: LogSink) -> None:
        self.pools = {c.name: FunctionPool(c, sink) for c in configs}

    def invoke(self, function_name: str, event: Any) -> Invocation:
        return self.pools[function_name].invoke(event)

    def pids(self) -> list[int]:
        return [pid for pool in self.pools.values() for pid in pool.pids()]

    def stop(self) -> None:
        threads = [threading.Thread(target=p.stop) for p in self.pools.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
