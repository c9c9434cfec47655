"""``valetkey vault status|rotate-kek``: key ids in use and online KEK rotation.

Rotation makes a new KEK current, re-wraps every credential's data key in batches (ciphertexts
are untouched), then retires the old KEK once no record uses it. Each batch commits on its own,
so an interrupted rotation leaves every record readable (old keys are kept) and re-running the
command finishes the job.
"""

from __future__ import annotations

from typing import Any

import anyio
from cyclopts import App

from valetkey_hookspecs import InvalidInput, Rewrap, SealError

from ..kernel import Kernel
from ..progress import progress
from . import state
from .output import print_json, print_table

app = App(name="vault", help="Inspect the vault and rotate its key-encryption key.")


@app.command
def status(*, json: bool = False) -> int:
    """Show the current KEK id, every known KEK and how many credentials each seals.

    Parameters
    ----------
    json
        Print JSON.
    """
    kernel = state.kernel()

    async def gather() -> dict[str, int]:
        async with kernel:
            return await kernel.store.credentials.key_ids()

    counts = anyio.run(gather)
    sealer = kernel.sealer
    known = sealer.key_ids()
    unknown = sorted(set(counts) - set(known))
    current = sealer.current_key_id()
    if json:
        print_json(
            {
                "current": current,
                "keys": [
                    {"key_id": k, "credentials": counts.get(k, 0), "current": k == current}
                    for k in known
                ],
                "unknown_key_ids": unknown,
                "rotation_pending": any(k != current and counts.get(k, 0) for k in known),
            }
        )
        return 0
    print_table(
        ["KEY ID", "CREDENTIALS", "CURRENT"],
        [[k, counts.get(k, 0), "yes" if k == current else ""] for k in known],
    )
    for key_id in unknown:
        print(f"warning: {counts[key_id]} credential(s) sealed under unknown key {key_id}")
    return 0


async def rewrap_all(kernel: Kernel, batch_size: int, report: Any = None) -> tuple[int, list[str]]:
    """Re-wrap every credential not under the current KEK, a page at a time (each page one
    transaction). Returns how many were re-wrapped and the ids of credentials that could not be
    opened (unknown key, tampered), which are skipped and reported, never a reason to stop."""
    sealer = kernel.sealer
    store = kernel.store
    current = sealer.current_key_id()
    done, unreadable = 0, []
    after: str | None = None
    while batch := await store.credentials.not_under_key(current, batch_size, after):
        after = batch[-1].id
        items = []
        for cred in batch:
            try:
                fresh = sealer.rewrap(cred.sealed, cred.id.encode())
            except SealError:
                unreadable.append(cred.id)
                continue
            items.append(
                Rewrap(cred.id, fresh.wrapped_key, fresh.key_id, cred.sealed.key_id, cred.version)
            )
        done += await store.credentials.rewrap(items)
        if report is not None:
            report.update(advance=len(batch))
    return done, unreadable


@app.command(name="rotate-kek")
def rotate_kek(*, batch_size: int = 500, retire_grace: float = 600.0, json: bool = False) -> int:
    """Make a new KEK current and re-wrap every data key under it; safe to interrupt and re-run.

    When records are still sealed under an older KEK (an interrupted rotation), this finishes
    that rotation instead of starting another.

    Parameters
    ----------
    batch_size
        Credentials re-wrapped per transaction.
    retire_grace
        Seconds an old KEK is kept after it stopped being current, so a running 'valetkey
        serve' picks up the new one before the old is forgotten (0: retire at once; only when no
        server shares this vault). 'valetkey vault retire' retires it later.
    json
        Print a JSON summary.
    """
    if batch_size < 1:
        raise InvalidInput("--batch-size must be at least 1")
    if retire_grace < 0:
        raise InvalidInput("--retire-grace must be 0 or more seconds")
    kernel = state.kernel()

    async def rotate() -> dict[str, Any]:
        async with kernel:
            sealer = kernel.sealer
            counts = await kernel.store.credentials.key_ids()
            old = sealer.current_key_id()
            known = set(sealer.key_ids())
            pending = sum(n for k, n in counts.items() if k != old and k in known)
            resumed = bool(pending)
            new = old if resumed else sealer.rotate_kek()
            total = sum(n for k, n in counts.items() if k != new)
            with progress("Re-wrapping data keys", total=total) as bar:
                rewrapped, unreadable = await rewrap_all(kernel, batch_size, bar)
            await kernel.store.flush()  # re-wraps durable before an old key may be forgotten
            in_use = list(await kernel.store.credentials.key_ids())
            retired = sealer.retire_keys(in_use, min_age=retire_grace)
            kept = [k for k in sealer.key_ids() if k != new]
            await kernel.store.audit.append(
                "vault.rotate_kek",
                actor="cli",
                detail={"from": old, "to": new, "rewrapped": rewrapped, "retired": retired},
            )
            return {
                "previous": old,
                "current": new,
                "rewrapped": rewrapped,
                "retired": retired,
                "resumed": resumed,
                "kept": kept,
                "unreadable": unreadable,
            }

    result = anyio.run(rotate)
    if json:
        print_json(result)
    else:
        if result["resumed"]:
            print("finished an interrupted rotation (run again to rotate to a new KEK)")
        if not result["previous"]:
            print("created the vault's first KEK")
        print(
            f"KEK {result['current']} is current; re-wrapped {result['rewrapped']} data key(s); "
            f"retired {len(result['retired'])} old key(s)"
        )
        if result["unreadable"]:
            print(
                f"warning: {len(result['unreadable'])} credential(s) could not be opened and "
                f"were left as they are: {', '.join(result['unreadable'][:10])}"
            )
        if result["kept"]:
            print(
                f"kept {len(result['kept'])} old key(s) for the --retire-grace period; "
                "run 'valetkey vault retire' after it to retire them"
            )
    return 0


@app.command
def retire(*, min_age: float = 600.0, json: bool = False) -> int:
    """Forget old KEKs that no credential uses any more and that stopped being current at least
    --min-age seconds ago.

    Parameters
    ----------
    min_age
        Seconds since a key stopped being current (0: any unused old key; only when no running
        server shares this vault).
    json
        Print a JSON summary.
    """
    if min_age < 0:
        raise InvalidInput("--min-age must be 0 or more seconds")
    kernel = state.kernel()

    async def run() -> tuple[list[str], list[str]]:
        async with kernel:
            await kernel.store.flush()
            counts = await kernel.store.credentials.key_ids()
            retired = kernel.sealer.retire_keys(list(counts), min_age=min_age)
            if retired:
                await kernel.store.audit.append(
                    "vault.retire_kek", actor="cli", detail={"retired": retired}
                )
            current = kernel.sealer.current_key_id()
            return retired, [k for k in kernel.sealer.key_ids() if k != current]

    retired, kept = anyio.run(run)
    if json:
        print_json({"retired": retired, "kept": kept})
    else:
        print(f"retired {len(retired)} old key(s); {len(kept)} old key(s) kept")
    return 0
