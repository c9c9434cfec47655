"""The box manager: a session per box (auth-page token, status, hook state) kept in the store,
on top of the selected box runtime. Used by the MCP tools, the auth page, the CLI and the
reaper alike; the store is the source of truth, so several processes (``valetkey serve`` and
the CLI) see the same boxes.

Lifecycle: ``create`` runs the create hooks (files, state), registers a proxy run for grants,
saves a PENDING session and starts the container; ``submit_code`` writes the person's code to
the box's login process and waits for it to say ready (READY, with the session URL) or fail
(ERROR, the person may try again); ``destroy`` removes the container, replays the destroy hooks
with their state, drops the proxy run and the session. ``restore`` (at start-up) drops sessions
whose container is gone; ``reap`` destroys boxes still not ready after ``auth_ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import getpass
import hashlib
import logging
import os
import secrets
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import anyio

from valetkey_hookspecs import (
    Box,
    BoxHook,
    BoxHookEvent,
    BoxRuntime,
    BoxSession,
    BoxSpec,
    BoxStatus,
    Conflict,
    ExecResult,
    InvalidInput,
    KernelAPI,
    NotFound,
    ValetkeyError,
    utcnow,
)
from valetkey_hookspecs.boxes import check_box_id
from valetkey_hookspecs.redaction import redact_text, register_secret

from . import grants as grants_mod
from . import hooks as hooks_mod
from .config import BoxesConfig
from .login import login_url, outcome, output_after

log = logging.getLogger("valetkey.boxes")

LOGIN_TAIL = 2000
MAX_DESCRIPTION = 500
MAX_COMMAND = 16 * 1024
#: the cross-process claim on a box id while it is created (seconds)
CREATE_LEASE = 600.0
#: concurrent exec/logs calls of one manager (each may hold an engine thread for long)
ENGINE_CALLS = 16
#: bytes of console text a logs call returns at most (the tail end)
MAX_LOG_BYTES = 1024 * 1024
#: seconds a session may be "creating" before its container exists (restore leaves it alone)
CREATE_GRACE = 60.0
#: seconds a remote spoke may take to list its boxes before ``list_boxes`` skips it
SPOKE_LIST_TIMEOUT = 10.0


def check_image(image: str, allowed: list[str]) -> str:
    """An image reference a box may use: no option-looking or blank names (they would reach an
    engine's argv), and one of ``allowed`` (shell-style patterns) when that list is set."""
    image = image.strip()
    if not image:
        raise InvalidInput("no image: name one, or set [plugin.boxes] default_image")
    if image.startswith("-") or any(c.isspace() or ord(c) < 32 for c in image) or len(image) > 255:
        raise InvalidInput(f"image {image[:80]!r} is not an image reference")
    if allowed and not any(fnmatch.fnmatchcase(image, pattern) for pattern in allowed):
        raise InvalidInput(
            f"image {image!r} is not allowed here ([plugin.boxes] allowed_images: "
            f"{', '.join(allowed)})"
        )
    return image


def hash_token(token: str) -> str:
    """What the store keeps of an auth-page token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Created:
    """A new box: its session, the auth-page token (shown once) and URL."""

    session: BoxSession
    token: str
    auth_url: str

    def as_dict(self) -> dict[str, Any]:
        """For MCP and ``--json`` (the token is the auth page's capability, not a credential)."""
        return {
            "box_id": self.session.box_id,
            "status": self.session.status.value,
            "image": self.session.image,
            "auth_url": self.auth_url,
            "token": self.token,
        }


def session_dict(session: BoxSession | None, box: Box | None) -> dict[str, Any]:
    """A box as tools and ``--json`` show it: never a token or a code."""
    out: dict[str, Any] = {}
    if box is not None:
        out.update(
            box_id=box.id,
            image=box.image,
            state=box.state,
            runtime=box.runtime,
            container_id=box.container_id,
            description=box.description,
        )
    if session is not None:
        out.update(
            box_id=session.box_id,
            image=session.image,
            runtime=session.runtime,
            description=session.description,
            status=session.status.value,
            error=session.error,
            session_url=session.session_url,
            spoke=session.spoke,
            created_at=session.created_at.isoformat(),
        )
    if box is None:
        out["state"] = "gone"
    if session is None:
        out["status"] = "unmanaged-session"  # a managed container without a session
    return out


class BoxManager:
    """Boxes of one kernel (its store, its box runtime, its hooks)."""

    def __init__(self, kernel: KernelAPI, config: BoxesConfig | None = None) -> None:
        self.kernel = kernel
        self.config = config or kernel.plugin_config("boxes") or BoxesConfig()
        self._create_lock = asyncio.Lock()
        self._creating: set[str] = set()
        self._submitting: dict[str, asyncio.Lock] = {}
        #: exec and logs share the engine's worker threads with everything else: bounded
        self._limiters: dict[str, anyio.CapacityLimiter] = {}
        #: ``spoke name → BoxRuntime`` of remote spokes (set by clustering; None: local only)
        self.spoke_runtime: Callable[[str], BoxRuntime] | None = None
        #: names of every enrolled remote spoke, for list fan-out (set by clustering)
        self.spoke_names: Callable[[], Awaitable[list[str]]] | None = None

    # ------------------------------------------------------------------ parts

    @property
    def runtime(self) -> BoxRuntime:
        """The runtime boxes run on (``[plugin.boxes] runtime``, else the selected one)."""
        return self.kernel.runtime(self.config.runtime or None)

    def runtime_for(self, spoke: str | None) -> BoxRuntime:
        """The runtime boxes of ``spoke`` run on: this server's own for no spoke (or
        ``local``); a remote spoke's through ``spoke_runtime`` once clustering sets it."""
        if spoke in (None, "", "local"):
            return self.runtime
        if self.spoke_runtime is None:
            raise NotFound(
                f"no spoke named {spoke!r}: this server runs boxes on its own runtime only "
                "(clustering is not configured)"
            )
        return self.spoke_runtime(spoke)

    def _limit(self, spoke: str | None) -> anyio.CapacityLimiter:
        """Engine calls are bounded per place they run: one stuck spoke cannot take the slots
        of this server's own boxes or of other spokes."""
        key = spoke or ""
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = anyio.CapacityLimiter(ENGINE_CALLS)
        return limiter

    async def runtime_of(self, box_id: str) -> BoxRuntime:
        """The runtime of an existing box (its session names the spoke)."""
        session = await self._session(box_id)
        return self.runtime_for(session.spoke if session is not None else None)

    def hooks(self) -> list[tuple[str, BoxHook]]:
        """Plugin hooks (name order), then the configured executables."""
        found = list(self.kernel.box_hooks)
        for path in self.config.hooks:
            found.append((f"exec:{path}", hooks_mod.ExecutableHook(path, self.config.hook_timeout)))
        return found

    def auth_url(self, token: str) -> str:
        """The auth page of a box."""
        return f"{self.config.public_url.rstrip('/')}/auth/{token}"

    def owner(self) -> str:
        """Whose connections box grants name."""
        return self.config.owner or os.environ.get("VALETKEY_OWNER") or getpass.getuser()

    # ------------------------------------------------------------------ lifecycle

    async def create(
        self,
        box_id: str,
        *,
        image: str | None = None,
        description: str = "",
        grants: list[str] | None = None,
        spoke: str | None = None,
    ) -> Created:
        """Create a box and its PENDING session. Bad input fails before any container exists;
        a failure after the hooks ran replays their destroy and leaves nothing behind."""
        check_box_id(box_id)
        runtime = self.runtime_for(spoke)  # NotFound for an unknown spoke, before anything
        spoke = None if spoke in (None, "", "local") else spoke
        image = check_image(image or self.config.default_image, self.config.allowed_images)
        if len(description) > MAX_DESCRIPTION:
            raise InvalidInput(f"description: at most {MAX_DESCRIPTION} characters")
        grants = list(grants or [])
        if len(set(grants)) != len(grants):
            raise InvalidInput("grants: a grant is named twice")
        async with self._create_lock:
            self._creating.add(box_id)
            try:
                return await self._create(box_id, image, description, grants, runtime, spoke)
            finally:
                self._creating.discard(box_id)

    async def _create(
        self,
        box_id: str,
        image: str,
        description: str,
        grants: list[str],
        runtime: BoxRuntime,
        spoke: str | None,
    ) -> Created:
        store = self.kernel.store
        # one creator per box id across processes (serve and the CLI share the store)
        lease, holder = f"box:{box_id}", secrets.token_hex(8)
        if not await store.leases.acquire(lease, holder, CREATE_LEASE):
            raise Conflict(f"box {box_id!r} is being created")
        try:
            try:
                await store.boxes.get(box_id)
            except NotFound:
                pass
            else:
                raise Conflict(f"box {box_id!r} exists already")
            return await self._create_claimed(box_id, image, description, grants, runtime, spoke)
        finally:
            await store.leases.release(lease, holder)

    async def _create_claimed(
        self,
        box_id: str,
        image: str,
        description: str,
        grants: list[str],
        runtime: BoxRuntime,
        spoke: str | None,
    ) -> Created:
        store = self.kernel.store
        event = BoxHookEvent(
            box_id=box_id, image=image, runtime=runtime.name, description=description, spoke=spoke
        )
        hooks = self.hooks()
        files, states = await hooks_mod.run_create(hooks, event)
        login = self.config.login_for(image)
        token = secrets.token_hex(32)
        box_run: grants_mod.BoxRun | None = None
        saved = False
        box: Box | None = None
        try:
            env: dict[str, str] = {}
            if grants:
                box_run = await grants_mod.register(
                    self.kernel.home, self.owner(), grants, box_id, self.config.proxy_host
                )
                register_secret(box_run.token)
                env.update(box_run.env)
                files.extend(box_run.files)
            state: dict[str, Any] = {"hooks": states, "creating": True}
            if box_run is not None:
                state["proxy_run"] = box_run.run_id
            session = BoxSession(
                box_id=box_id,
                token_hash=hash_token(token),
                image=image,
                runtime=runtime.name,
                description=description,
                spoke=spoke,
                hook_state=state,
            )
            await store.boxes.put(session)
            saved = True
            box = await runtime.create(
                BoxSpec(
                    box_id=box_id,
                    image=image,
                    description=description,
                    env=env,
                    files=tuple(files),
                    command=tuple(login.command) or None,
                    network=self.config.network or None,
                )
            )
            if box_run is not None:
                await grants_mod.bind(self.kernel.home, box_run, box.container_id)
            created = {k: v for k, v in state.items() if k != "creating"}
            session = replace(session, hook_state=created)
            await store.boxes.put(session)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if box is not None:  # created, then a later step failed: leave nothing behind
                    with contextlib.suppress(Exception):
                        await runtime.destroy(box_id)
                if saved:
                    await self._delete_if_ours(box_id, hash_token(token))
                if box_run is not None:
                    await grants_mod.unregister(self.kernel.home, box_run.run_id)
                await hooks_mod.run_destroy(hooks, event, states)
            raise
        await self._audit("box.create", box_id, {"image": image, "grants": grants})
        return Created(session, token, self.auth_url(token))

    async def _delete_if_ours(self, box_id: str, token_hash: str) -> None:
        """Delete a session only if it is still the one we wrote (never another creator's)."""
        current = await self._session(box_id)
        if current is not None and current.token_hash == token_hash:
            await self.kernel.store.boxes.delete(box_id)

    async def destroy(self, box_id: str) -> None:
        """Destroy the box and forget its session (replaying destroy hooks, dropping its run)."""
        check_box_id(box_id)
        holder = await self.kernel.store.leases.holder(f"box:{box_id}")
        if holder is not None or box_id in self._creating:
            raise Conflict(f"box {box_id!r} is being created; destroy it when that is done")
        session = await self._session(box_id)
        try:
            await self.runtime_for(session.spoke if session else None).destroy(box_id)
        except NotFound:
            if session is None:
                raise NotFound(f"no box {box_id!r}") from None
        if session is not None:
            await self._forget(session)
        await self._audit("box.destroy", box_id, {})

    async def _forget(self, session: BoxSession) -> None:
        event = BoxHookEvent(
            box_id=session.box_id,
            image=session.image,
            runtime=session.runtime,
            description=session.description,
            spoke=session.spoke,
        )
        await hooks_mod.run_destroy(self.hooks(), event, session.hook_state.get("hooks") or {})
        run_id = session.hook_state.get("proxy_run")
        if run_id:
            await grants_mod.unregister(self.kernel.home, str(run_id))
        await self.kernel.store.boxes.delete(session.box_id)

    # ------------------------------------------------------------------ reads

    async def _session(self, box_id: str) -> BoxSession | None:
        try:
            return await self.kernel.store.boxes.get(box_id)
        except NotFound:
            return None

    async def get(self, box_id: str) -> dict[str, Any]:
        """The box and its session; ``NotFound`` when neither exists."""
        check_box_id(box_id)
        session = await self._session(box_id)
        try:
            box: Box | None = await self.runtime_for(session.spoke if session else None).get(box_id)
        except NotFound:
            box = None
        if box is None and session is None:
            raise NotFound(f"no box {box_id!r}")
        out = session_dict(session, box)
        if session is not None and session.status is not BoxStatus.READY and box is not None:
            out["login_url"] = await self.login_url(session)
        return out

    async def list_boxes(self) -> list[dict[str, Any]]:
        """Every managed box with its session (and sessions whose box is gone), on this server
        and on every spoke, each tagged with its ``spoke`` (see :meth:`list_fleet`)."""
        return list((await self.list_fleet())["boxes"])

    async def list_fleet(self) -> dict[str, Any]:
        """``{"boxes": [...], "skipped": [{"spoke", "error"}]}``: the boxes of this server's
        runtime (``spoke: "local"``; boxes another spoke labelled on a shared engine left out)
        and of every remote spoke, listed at once. A spoke that errors or is not connected is
        skipped and reported; its boxes' sessions are listed with state ``unknown`` and a
        ``spoke_error``."""
        from .fleet_protocol import SPOKE_LABEL

        sessions = {s.box_id: s for s in await self.kernel.store.boxes.list()}
        names = {s.spoke for s in sessions.values() if s.spoke}
        if self.spoke_names is not None:
            names |= set(await self.spoke_names())

        async def remote(name: str) -> tuple[str, list[Box], str | None]:
            try:
                async with asyncio.timeout(SPOKE_LIST_TIMEOUT):
                    return name, await self.runtime_for(name).list(), None
            except Exception as exc:
                why = redact_text(str(exc)) or type(exc).__name__
                return name, [], why if isinstance(exc, ValetkeyError) else type(exc).__name__

        results = await asyncio.gather(*(remote(n) for n in sorted(names)))
        local = await self.runtime.list()
        where: dict[str, tuple[str, Box]] = {
            b.id: ("local", b) for b in local if SPOKE_LABEL not in b.labels
        }
        skipped = []
        for name, boxes, error in results:
            if error is not None:
                skipped.append({"spoke": name, "error": error})
                log.warning("list: skipped spoke %s: %s", name, error)
                continue
            for reported in boxes:
                # a spoke speaks for its own boxes only: not the hub's, not another spoke's,
                # not one whose session names another spoke
                session = sessions.get(reported.id)
                owned = session.spoke == name if session is not None else True
                if not owned or reported.id in where:
                    log.warning("list: spoke %s reported box %s it does not own", name, reported.id)
                    continue
                where[reported.id] = (name, reported)
        failed = {s["spoke"]: s["error"] for s in skipped}
        rows = []
        for box_id in sorted(set(where) | set(sessions)):
            session = sessions.get(box_id)
            found = where.get(box_id)
            spoke, box = found if found is not None else (None, None)
            row = session_dict(session, box)
            row["spoke"] = spoke or (session.spoke if session else None) or "local"
            if box is None and session is not None and session.spoke in failed:
                row["state"] = "unknown"
                row["spoke_error"] = failed[session.spoke]
            rows.append(row)
        return {"boxes": rows, "skipped": skipped}

    async def exec(self, box_id: str, command: str, *, timeout: float | None = None) -> ExecResult:
        """Run ``sh -c command`` in the box. Output passes through the redactor (a proxy run
        token in the box's environment, a code just pasted, never leave through it). Until the
        box is signed in, exec is refused: the login process holds the code on its stdin."""
        check_box_id(box_id)
        if not command.strip():
            raise InvalidInput("command: give a shell command line")
        if len(command) > MAX_COMMAND:
            raise InvalidInput(f"command: at most {MAX_COMMAND} characters")
        session = await self._session(box_id)
        if (
            session is not None
            and session.status is not BoxStatus.READY
            and not self.config.exec_before_ready
        ):
            raise Conflict(
                f"box {box_id} is waiting for its sign-in (status {session.status.value}): "
                "exec is possible once it is ready"
            )
        runtime = self.runtime_for(session.spoke if session else None)
        async with self._limit(session.spoke if session else None):
            result = await runtime.exec(box_id, command, timeout=timeout)
        return replace(result, stdout=redact_text(result.stdout), stderr=redact_text(result.stderr))

    async def logs(self, box_id: str, tail: int = 200) -> str:
        """The last ``tail`` lines of the box's console (1..10000, at most 1 MiB), redacted."""
        check_box_id(box_id)
        if not 1 <= tail <= 10_000:
            raise InvalidInput("tail: between 1 and 10000 lines")
        session = await self._session(box_id)
        spoke = session.spoke if session else None
        runtime = self.runtime_for(spoke)
        async with self._limit(spoke):
            text = await runtime.logs(box_id, tail)
        return redact_text(text[-MAX_LOG_BYTES:])

    # ------------------------------------------------------------------ the auth page

    async def session_for_token(self, token: str) -> BoxSession:
        """The session an auth-page token opens; ``NotFound`` says the link is not valid."""
        if len(token) != 64 or any(c not in "0123456789abcdef" for c in token):
            raise NotFound("this sign-in link is not valid (or the box is gone)")
        try:
            return await self.kernel.store.boxes.find_by_token(hash_token(token))
        except NotFound:
            raise NotFound("this sign-in link is not valid (or the box is gone)") from None

    async def login_url(self, session: BoxSession) -> str | None:
        """The sign-in URL the box printed, if any."""
        try:
            output = await self.runtime_for(session.spoke).logs(session.box_id, LOGIN_TAIL)
        except NotFound:
            return None
        output = output[-MAX_LOG_BYTES:]
        return login_url(self.config.login_for(session.image), output)

    async def submit_code(self, token: str, code: str) -> BoxSession:
        """Send the person's code to the box's login and wait for ready or an error. The code
        goes to the box's stdin only: it is never stored, logged or returned."""
        code = code.strip()
        session = await self.session_for_token(token)
        if not code:
            raise InvalidInput("paste the code the sign-in page gave you (it was empty)")
        if "\n" in code or "\r" in code or len(code) > 4096:
            raise InvalidInput("the code must be one line of at most 4096 characters")
        if session.status is BoxStatus.READY:
            raise Conflict(f"box {session.box_id} is ready already")
        lock = self._submitting.setdefault(session.box_id, asyncio.Lock())
        if lock.locked():
            raise Conflict(f"a code for box {session.box_id} is being checked; wait for it")
        async with lock:
            return await self._submit(session, token, code)

    async def _submit(self, session: BoxSession, token: str, code: str) -> BoxSession:
        register_secret(code)
        spec = self.config.login_for(session.image)
        runtime = self.runtime_for(session.spoke)
        before = await runtime.logs(session.box_id, LOGIN_TAIL)
        await runtime.write_stdin(session.box_id, (code + "\n").encode())
        deadline = time.monotonic() + spec.ready_timeout
        error: str | None = None
        session_url: str | None = None
        ready = False
        while True:
            now = await runtime.logs(session.box_id, LOGIN_TAIL)
            result = outcome(spec, output_after(before, now), code)
            if result.ready or result.error:
                ready, error, session_url = result.ready, result.error, result.session_url
                break
            box = await runtime.get(session.box_id)
            if box.state not in ("running", "created", "restarting"):
                error = f"the box's login process ended (box {box.state}) without saying ready"
                break
            if time.monotonic() > deadline:
                error = f"the box did not say ready within {spec.ready_timeout:g} s"
                break
            await asyncio.sleep(0.2)
        updated = replace(
            session,
            status=BoxStatus.READY if ready else BoxStatus.ERROR,
            error=None if ready else redact_text(error or "the login failed"),
            session_url=session_url,
            updated_at=utcnow(),
        )
        await self.kernel.store.boxes.put(updated)
        await self._audit("box.ready" if ready else "box.login_failed", session.box_id, {})
        return updated

    # ------------------------------------------------------------------ start-up and reaping

    async def restore(self) -> tuple[list[str], list[str]]:
        """Keep sessions whose box exists; drop (with their destroy hooks) the others — except a
        session whose box is still being created (here or by the CLI) and less than a minute
        old: it is kept until the next start."""
        async with self._create_lock:
            return await self._restore()

    async def _restore(self) -> tuple[list[str], list[str]]:
        sessions = await self.kernel.store.boxes.list()  # first: a box created after this
        boxes = {b.id for b in await self.runtime.list()}  # listing is not dropped below
        settling = utcnow() - timedelta(seconds=CREATE_GRACE)
        kept, dropped = [], []
        for session in sessions:
            if session.spoke:  # a remote spoke's box: its spoke reports it when connected
                kept.append(session.box_id)
                continue
            creating = bool(session.hook_state.get("creating"))
            if session.box_id in boxes or (creating and session.created_at > settling):
                kept.append(session.box_id)
                continue
            if await self._still_there(session.box_id):  # created or claimed meanwhile
                kept.append(session.box_id)
                continue
            await self._forget(session)
            dropped.append(session.box_id)
        if dropped:
            log.warning("dropped %d box session(s) whose box is gone: %s", len(dropped), dropped)
        return kept, dropped

    async def _still_there(self, box_id: str) -> bool:
        if await self.kernel.store.leases.holder(f"box:{box_id}") is not None:
            return True
        try:
            await self.runtime.get(box_id)
        except NotFound:
            return False
        return True

    async def reap(self) -> list[str]:
        """Destroy boxes still not ready ``auth_ttl`` after creation; ready boxes stay."""
        cutoff = utcnow() - timedelta(seconds=self.config.auth_ttl)
        reaped = []
        for session in await self.kernel.store.boxes.list():
            if session.status is BoxStatus.READY or session.created_at > cutoff:
                continue
            try:
                await self.destroy(session.box_id)
            except Exception as exc:
                log.warning("reaper: box %s: %s", session.box_id, redact_text(str(exc)))
                continue
            reaped.append(session.box_id)
        if reaped:
            log.warning("reaper: destroyed %d box(es) never signed in: %s", len(reaped), reaped)
        return reaped

    async def _audit(self, action: str, box_id: str, detail: dict[str, Any]) -> None:
        await self.kernel.store.audit.append(
            action, actor="boxes", detail={"box_id": box_id, **detail}
        )


_managers: weakref.WeakKeyDictionary[Any, BoxManager] = weakref.WeakKeyDictionary()


def manager_for(kernel: KernelAPI) -> BoxManager:
    """The one manager of a kernel (tools, the auth page and the reaper share it)."""
    manager = _managers.get(kernel)
    if manager is None:
        manager = _managers[kernel] = BoxManager(kernel)
    return manager
