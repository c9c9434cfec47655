"""``DockerRuntime``: the :class:`~valetkey_hookspecs.BoxRuntime` contract over the Docker Engine
API, through the docker SDK's low-level ``APIClient``.

The SDK blocks, so every engine call runs in a worker thread (``anyio.to_thread``); the event
loop never waits on a socket. Only containers carrying ``valetkey.managed=1`` are ever looked at
or changed: a box is found by its container name (the box id) *and* its labels, so a container
someone else made under that name is "not found", never stopped. Every check on a request (id,
files, limits, duplicates, ``max_boxes``) happens before a container exists; a container whose
files or start fail is removed again.

Env values may be tokens or placeholders: they go to the engine and nowhere else — never into a
log line or an error message.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import logging
import os
import tarfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread

from valetkey_hookspecs import (
    Box,
    BoxSpec,
    Conflict,
    ExecResult,
    InvalidInput,
    NotFound,
    RuntimeUnavailable,
    ValetkeyError,
)
from valetkey_hookspecs.boxes import (
    BOX_ID_LABEL,
    DEFAULT_LOG_TAIL,
    DESCRIPTION_LABEL,
    EXEC_OUTPUT_LIMIT,
    EXEC_TIMEOUT_EXIT_CODE,
    MANAGED_LABEL,
    MANAGED_VALUE,
    cap_output,
    check_box_files,
    check_box_id,
    is_valid_box_id,
    managed_labels,
    resolve_limits,
    strip_ansi,
    timed_out,
)
from valetkey_hookspecs.redaction import redact_text

from .config import DockerConfig

if TYPE_CHECKING:
    from docker import APIClient

    from valetkey_hookspecs import BoxFile

log = logging.getLogger("valetkey.runtime_docker")

T = TypeVar("T")

#: the engine's own default when neither config nor DOCKER_HOST names one
DEFAULT_HOST = "unix:///var/run/docker.sock"
START_HINT = (
    "start docker (`sudo systemctl start docker`, or run `dockerd`) or point DOCKER_HOST "
    "(or docker_host in [plugin.runtime-docker]) at a running engine"
)
#: the label naming the runtime that made a container
RUNTIME_LABEL = "valetkey.runtime"
#: a box's container is named ``valetkey-<box id>`` (docker names need two characters or more;
#: ``docker ps`` shows whose containers they are)
CONTAINER_PREFIX = "valetkey-"
#: connections kept to the engine (parallel creates, execs and the liveness checks)
POOL_SIZE = 32


def engine_address(config: DockerConfig) -> str:
    """Where the engine is expected: config, else ``DOCKER_HOST``, else the default socket."""
    return redact_text(config.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST)


def unavailable(config: DockerConfig, reason: str) -> RuntimeUnavailable:
    """The error for an engine that cannot be reached, naming where and how to fix it."""
    reason = redact_text(reason.strip().splitlines()[0] if reason.strip() else "no answer")
    return RuntimeUnavailable(
        f"docker engine at {engine_address(config)} is unreachable ({reason}); {START_HINT}"
    )


def connect(config: DockerConfig, *, timeout: float | None = None) -> APIClient:
    """A low-level client for the configured engine (one ``/version`` call when ``auto``)."""
    import docker
    from docker.errors import DockerException, TLSParameterError

    try:
        kwargs: dict[str, Any] = docker.utils.kwargs_from_env()
    except (TLSParameterError, DockerException) as exc:
        raise RuntimeUnavailable(f"DOCKER_TLS_VERIFY / DOCKER_CERT_PATH: {exc}") from None
    if config.docker_host:
        kwargs["base_url"] = config.docker_host
        if config.docker_host.startswith(("unix://", "ssh://", "npipe://")):
            kwargs.pop("tls", None)
    try:
        return docker.APIClient(
            version=config.api_version,
            timeout=timeout if timeout is not None else config.api_timeout,
            max_pool_size=POOL_SIZE,
            **kwargs,
        )
    except DockerException as exc:
        raise unavailable(config, str(exc)) from None


def ping(config: DockerConfig, timeout: float = 2.0) -> str | None:
    """None when the engine answers within ``timeout``; else the problem, in one line."""
    fixed = DockerConfig(**{**_fields(config), "api_version": "1.24"})  # /_ping needs no probe
    try:
        api = connect(fixed, timeout=timeout)
        try:
            api.ping()
        finally:
            api.close()
    except RuntimeUnavailable as exc:
        return str(exc)
    except Exception as exc:
        return str(unavailable(config, _describe(exc)))
    return None


def _fields(config: DockerConfig) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    # requests' connection errors nest several reprs: keep the innermost reason
    for marker in ("Errno", "Connection refused", "No such file", "timed out", "Read timed out"):
        if marker in text:
            return text[text.index(marker) :].split("'))")[0].rstrip(")'\"")
    return text


class DockerRuntime:
    """Boxes as docker containers (see the module docstring)."""

    name = "docker"

    def __init__(self, config: DockerConfig | None = None) -> None:
        self.config = config or DockerConfig()
        self._api: APIClient | None = None
        self._client_lock = threading.Lock()
        #: serializes "count and check, then create" so max_boxes and ids hold in this process
        self._create_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DockerRuntime(engine={engine_address(self.config)!r})"

    # ------------------------------------------------------------------ plumbing

    def _client(self) -> APIClient:
        with self._client_lock:
            if self._api is None:
                self._api = connect(self.config)
            return self._api

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(api, *args)`` in a worker thread, turning engine errors into ours."""
        return await anyio.to_thread.run_sync(partial(self._guarded, fn, *args))

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        import requests.exceptions
        from docker.errors import APIError, DockerException
        from docker.errors import NotFound as DockerNotFound

        try:
            return fn(self._client(), *args)
        except ValetkeyError:
            raise
        except DockerNotFound as exc:
            raise NotFound(_explain(exc)) from None
        except APIError as exc:
            status = exc.status_code or 500
            if status == 409:
                raise Conflict(_explain(exc)) from None
            if status == 400:
                raise InvalidInput(_explain(exc)) from None
            raise RuntimeUnavailable(f"docker engine error: {_explain(exc)}") from None
        except requests.exceptions.Timeout:
            raise unavailable(
                self.config, f"no answer within {self.config.api_timeout:g}s"
            ) from None
        except (requests.exceptions.ConnectionError, DockerException, OSError) as exc:
            raise unavailable(self.config, _describe(exc)) from None

    def _find(self, api: APIClient, box_id: str) -> dict[str, Any]:
        """The inspect document of the managed box ``box_id``; NotFound otherwise."""
        from docker.errors import NotFound as DockerNotFound

        missing = NotFound(f"no box {box_id!r} in the docker runtime")
        if not is_valid_box_id(box_id):
            raise missing
        try:
            info: dict[str, Any] = api.inspect_container(container_name(box_id))
        except DockerNotFound:
            raise missing from None
        labels = (info.get("Config") or {}).get("Labels") or {}
        # the name also matches an id prefix: the labels decide which container is this box
        if labels.get(MANAGED_LABEL) != MANAGED_VALUE or labels.get(BOX_ID_LABEL) != box_id:
            raise missing
        return info

    # ------------------------------------------------------------------ BoxRuntime

    async def create(self, spec: BoxSpec) -> Box:
        """Check everything, create the container, inject files, start it; see the module doc."""
        check_box_id(spec.box_id)
        check_box_files(spec.files)
        limits = resolve_limits(
            spec,
            memory_mib=self.config.memory_mib,
            cpus=self.config.cpus,
            pids=self.config.pids,
        )
        if not spec.image.strip():
            raise InvalidInput(f"box {spec.box_id!r}: no image given")
        for key in spec.env:
            if not key or "=" in key or "\x00" in key:
                raise InvalidInput(
                    f"box {spec.box_id!r}: invalid environment variable name {key!r}"
                )
        network = spec.network or self.config.network
        return await self._run(self._create, spec, limits, network)

    def _create(
        self, api: APIClient, spec: BoxSpec, limits: tuple[int, float, int], network: str
    ) -> Box:
        from docker.errors import APIError, ImageNotFound

        memory, cpus, pids = limits
        labels = {
            **spec.labels,
            **managed_labels(spec.box_id, spec.description),
            RUNTIME_LABEL: self.name,
        }
        host_config = api.create_host_config(
            mem_limit=f"{memory}m",
            nano_cpus=round(cpus * 1e9),
            pids_limit=pids,
            network_mode=network,
            init=self.config.init or None,
            cap_drop=["ALL"],
            cap_add=list(self.config.cap_add) or None,
            security_opt=["no-new-privileges"] if self.config.no_new_privileges else None,
            log_config={"type": "json-file", "config": {"max-size": self.config.log_max_size}},
        )
        create = partial(
            api.create_container,
            spec.image,
            command=list(spec.command) if spec.command else None,
            hostname=spec.box_id,
            name=container_name(spec.box_id),
            environment=[f"{k}={v}" for k, v in spec.env.items()],
            labels=labels,
            stdin_open=spec.stdin_open,
            tty=False,
            host_config=host_config,
        )
        with self._create_lock:
            boxes = api.containers(all=True, filters={"label": f"{MANAGED_LABEL}={MANAGED_VALUE}"})
            if any((c.get("Labels") or {}).get(BOX_ID_LABEL) == spec.box_id for c in boxes):
                raise Conflict(f"a box named {spec.box_id!r} exists already")
            limit = self.config.max_boxes
            if limit and len(boxes) >= limit:
                raise Conflict(
                    f"cannot create box {spec.box_id!r}: {len(boxes)} boxes exist and "
                    f"max_boxes is {limit} (destroy one, or raise max_boxes in "
                    "[plugin.runtime-docker])"
                )
            try:
                try:
                    created = create()
                except ImageNotFound:
                    self._pull(api, spec.image)
                    created = create()
            except APIError as exc:
                if exc.status_code == 409:
                    raise self._name_taken(api, spec.box_id) from None
                raise
        container_id: str = created["Id"]
        try:
            if spec.files:
                api.put_archive(container_id, "/", _files_tar(spec.files))
            api.start(container_id)
            info: dict[str, Any] = api.inspect_container(container_id)
        except BaseException:
            with contextlib.suppress(Exception):
                api.remove_container(container_id, force=True, v=True)
            raise
        log.info("box %s created (container %s)", spec.box_id, container_id[:12])
        return self._box(info)

    def _name_taken(self, api: APIClient, box_id: str) -> Conflict:
        """Why the container name of ``box_id`` is taken: a box made by another process
        meanwhile, or a container valetkey does not manage."""
        try:
            self._find(api, box_id)
        except NotFound:
            return Conflict(
                f"cannot create box {box_id!r}: a container named {container_name(box_id)!r} "
                "exists that valetkey does not manage (it is left alone)"
            )
        return Conflict(f"a box named {box_id!r} exists already")

    def _pull(self, api: APIClient, image: str) -> None:
        from docker.errors import APIError

        if self.config.pull == "never":
            raise NotFound(f"image {image!r} is not in the docker engine (pull = 'never')")
        repository, tag = _split_image(image)
        log.info("pulling image %s", image)
        try:
            api.pull(repository, tag=tag)
        except APIError as exc:
            raise NotFound(
                f"image {image!r} is not in the engine and cannot be pulled: {_explain(exc)}"
            ) from None

    async def get(self, box_id: str) -> Box:
        """The managed box ``box_id``; NotFound otherwise."""
        return await self._run(lambda api: self._box(self._find(api, box_id)))

    async def list(self) -> list[Box]:
        """Every managed box, by id."""
        return await self._run(self._list)

    def _list(self, api: APIClient) -> builtins.list[Box]:
        found = api.containers(all=True, filters={"label": f"{MANAGED_LABEL}={MANAGED_VALUE}"})
        boxes = []
        for c in found:
            labels = c.get("Labels") or {}
            box_id = labels.get(BOX_ID_LABEL, "")
            if not is_valid_box_id(box_id):
                continue
            boxes.append(
                Box(
                    id=box_id,
                    runtime=self.name,
                    image=c.get("Image", ""),
                    state=c.get("State", ""),
                    container_id=c.get("Id"),
                    description=labels.get(DESCRIPTION_LABEL, ""),
                    labels=dict(labels),
                    created_at=datetime.fromtimestamp(c["Created"], UTC)
                    if "Created" in c
                    else None,
                )
            )
        return sorted(boxes, key=lambda b: b.id)

    async def exec(self, box_id: str, command: str, *, timeout: float | None = None) -> ExecResult:
        """``sh -c command`` in the box; output capped per stream; a timeout is a result (124)."""
        if not command.strip():
            raise InvalidInput("exec: the command is empty")
        seconds = timeout if timeout is not None else self.config.exec_timeout
        if not seconds > 0:
            raise InvalidInput(f"exec: timeout must be positive (got {seconds})")
        return await self._run(self._exec, box_id, command, seconds)

    def _exec(self, api: APIClient, box_id: str, command: str, seconds: float) -> ExecResult:
        deadline = time.monotonic() + seconds
        info = self._find(api, box_id)
        if not (info.get("State") or {}).get("Running"):
            raise Conflict(f"box {box_id!r} is not running")
        exec_id = api.exec_create(info["Id"], ["sh", "-c", command], stdin=False, tty=False)["Id"]
        sock = api.exec_start(exec_id, socket=True)
        try:
            out, err, finished = _read_frames(getattr(sock, "_sock", sock), deadline)
        finally:
            with contextlib.suppress(Exception):
                sock.close()
        stdout, cut_out = cap_output(out)
        stderr, cut_err = cap_output(err)
        if not finished:
            log.info("exec in box %s timed out after %gs", box_id, seconds)
            return ExecResult(
                stdout=stdout,
                stderr=timed_out(stderr, seconds),
                exit_code=EXEC_TIMEOUT_EXIT_CODE,
                truncated=cut_out or cut_err,
            )
        return ExecResult(
            stdout=stdout,
            stderr=stderr,
            exit_code=_exit_code(api, exec_id),
            truncated=cut_out or cut_err,
        )

    async def logs(self, box_id: str, tail: int = DEFAULT_LOG_TAIL) -> str:
        """The last ``tail`` lines (default 200 when not positive) of the box's output."""
        lines = tail if tail > 0 else DEFAULT_LOG_TAIL
        return await self._run(self._logs, box_id, lines)

    def _logs(self, api: APIClient, box_id: str, tail: int) -> str:
        info = self._find(api, box_id)
        raw = api.logs(info["Id"], stdout=True, stderr=True, tail=tail, timestamps=False)
        return strip_ansi(raw.decode("utf-8", errors="replace"))

    async def write_stdin(self, box_id: str, data: bytes) -> None:
        """Write ``data`` to the main process's stdin (the box must be running, stdin open)."""
        await self._run(self._write_stdin, box_id, bytes(data))

    def _write_stdin(self, api: APIClient, box_id: str, data: bytes) -> None:
        info = self._find(api, box_id)
        if not (info.get("Config") or {}).get("OpenStdin"):
            raise InvalidInput(f"box {box_id!r} was created without stdin (stdin_open=False)")
        if not (info.get("State") or {}).get("Running"):
            raise Conflict(f"box {box_id!r} is not running")
        sock = api.attach_socket(info["Id"], params={"stdin": 1, "stream": 1})
        raw = getattr(sock, "_sock", sock)
        try:
            raw.settimeout(self.config.api_timeout)
            raw.sendall(data)
        finally:
            with contextlib.suppress(Exception):
                sock.close()
        log.info("wrote %d bytes to the stdin of box %s", len(data), box_id)

    async def destroy(self, box_id: str) -> None:
        """SIGTERM, SIGKILL after ``stop_timeout`` seconds, remove; NotFound when no such box."""
        await self._run(self._destroy, box_id)

    def _destroy(self, api: APIClient, box_id: str) -> None:
        from docker.errors import NotFound as DockerNotFound

        container_id = self._find(api, box_id)["Id"]
        with contextlib.suppress(DockerNotFound):
            api.stop(container_id, timeout=self.config.stop_timeout)
        with contextlib.suppress(DockerNotFound):
            api.remove_container(container_id, force=True, v=True)
        log.info("box %s destroyed", box_id)

    async def is_alive(self, container_id: str) -> bool:
        """Whether the container runs; False when it is gone or stopped."""
        return await self._run(self._is_alive, container_id)

    def _is_alive(self, api: APIClient, container_id: str) -> bool:
        from docker.errors import NotFound as DockerNotFound

        if not container_id or "/" in container_id:
            return False
        try:
            info = api.inspect_container(container_id)
        except DockerNotFound:
            return False
        state = info.get("State") or {}
        return bool(state.get("Running")) and not state.get("Paused")

    async def close(self) -> None:
        """Close the engine connections; idempotent (a later call reconnects)."""
        with self._client_lock:
            api, self._api = self._api, None
        if api is not None:
            await anyio.to_thread.run_sync(api.close)

    # ------------------------------------------------------------------ helpers

    def _box(self, info: Mapping[str, Any]) -> Box:
        config = info.get("Config") or {}
        labels = dict(config.get("Labels") or {})
        return Box(
            id=labels.get(BOX_ID_LABEL, ""),
            runtime=self.name,
            image=config.get("Image", ""),
            state=(info.get("State") or {}).get("Status", ""),
            container_id=info.get("Id"),
            description=labels.get(DESCRIPTION_LABEL, ""),
            labels=labels,
            created_at=_parse_time(info.get("Created")),
        )


def container_name(box_id: str) -> str:
    """The container name of a box."""
    return f"{CONTAINER_PREFIX}{box_id}"


def _explain(exc: Any) -> str:
    explanation = getattr(exc, "explanation", None) or str(exc)
    return redact_text(str(explanation))


def _split_image(image: str) -> tuple[str, str]:
    """(repository, tag or digest reference) of an image name."""
    if "@" in image:
        repository, digest = image.split("@", 1)
        return repository, digest
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repository, tag = image.rsplit(":", 1)
        return repository, tag
    return image, "latest"


def _parse_time(text: Any) -> datetime | None:
    """Docker's RFC 3339 timestamps carry nanoseconds: keep microseconds."""
    if not isinstance(text, str) or not text:
        return None
    head, _, rest = text.partition(".")
    if rest:
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _files_tar(files: tuple[BoxFile, ...]) -> bytes:
    """A tarball of ``files`` for ``put_archive`` at ``/`` (parent folders are created)."""
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in files:
            info = tarfile.TarInfo(f.path.lstrip("/"))
            info.size = len(f.content)
            info.mode = f.mode
            info.uid = f.uid
            info.gid = f.gid
            info.mtime = now
            tar.addfile(info, io.BytesIO(f.content))
    return buf.getvalue()


def _read_frames(sock: Any, deadline: float) -> tuple[bytes, bytes, bool]:
    """Read a multiplexed exec stream until EOF or ``deadline``: (stdout, stderr, finished).
    Each stream keeps at most ``EXEC_OUTPUT_LIMIT + 1`` bytes (enough to know it was cut)."""
    keep = EXEC_OUTPUT_LIMIT + 1
    streams = {1: bytearray(), 2: bytearray()}
    pending = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bytes(streams[1]), bytes(streams[2]), False
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return bytes(streams[1]), bytes(streams[2]), False
        if not chunk:
            return bytes(streams[1]), bytes(streams[2]), True
        pending += chunk
        while len(pending) >= 8:
            size = int.from_bytes(pending[4:8], "big")
            if len(pending) < 8 + size:
                break
            target = streams.get(pending[0])
            if target is not None and len(target) < keep:
                target += pending[8 : 8 + min(size, keep - len(target))]
            del pending[: 8 + size]


def _exit_code(api: APIClient, exec_id: str) -> int:
    """The exec's exit code (the engine may record it a moment after the stream ends)."""
    for _ in range(100):
        info = api.exec_inspect(exec_id)
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        time.sleep(0.01)
    raise RuntimeUnavailable("docker engine error: the exec ended but reports no exit code")
