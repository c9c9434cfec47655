"""CLI start-up: ``valetkey --help`` (and ``--version``, ``plugins list``) against a bare
``python -c pass``, medians of N runs of each, interleaved, in the same process tree.

    uv run python bench/cli_startup.py [--runs 30]

Goal (issue 2): ``valetkey --help`` with every workspace plugin installed costs at most 150 ms
more than a bare interpreter start. ``--help`` is served from a cache that any change to the
installed plugins or the config invalidates (valetkey/cli/helpcache.py); "(cold)" runs each time
with an empty cache, i.e. the first call after such a change.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "bare python -c pass": [sys.executable, "-c", "pass"],
    "valetkey --help": [sys.executable, "-m", "valetkey", "--help"],
    "valetkey --help (cold)": [sys.executable, "-m", "valetkey", "--help"],
    "valetkey --version": [sys.executable, "-m", "valetkey", "--version"],
    "valetkey plugins list": [sys.executable, "-m", "valetkey", "plugins", "list"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "VALETKEY_HOME": f"{tmp}/home", "XDG_CACHE_HOME": f"{tmp}/cache"}
        # as on a user's machine, Python may cache the bytecode of valetkey's own (editable)
        # sources; the installed dependencies are byte-compiled by uv (compile-bytecode = true)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        times: dict[str, list[float]] = {name: [] for name in CASES}
        for cmd in CASES.values():  # warm the file cache and stevedore's entry-point cache
            subprocess.run(cmd, env=env, capture_output=True, check=True)
        for run in range(args.runs):
            for name, cmd in CASES.items():
                run_env = env
                if name.endswith("(cold)"):
                    run_env = {**env, "XDG_CACHE_HOME": f"{tmp}/cold-{run}"}
                start = time.perf_counter()
                subprocess.run(cmd, env=run_env, capture_output=True, check=True)
                times[name].append((time.perf_counter() - start) * 1000)
    base = statistics.median(times["bare python -c pass"])
    print(f"{'command':<26}{'median ms':>10}{'p90 ms':>9}{'over bare':>11}{'ratio':>7}")
    for name, values in times.items():
        med = statistics.median(values)
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"{name:<26}{med:>10.1f}{p90:>9.1f}{med - base:>+11.1f}{med / base:>7.1f}x")
    over = statistics.median(times["valetkey --help"]) - base
    print(
        f"\nvaletkey --help costs {over:.0f} ms over a bare interpreter (goal: <= 150 ms): "
        f"{'OK' if over <= 150 else 'OVER BUDGET'}"
    )


if __name__ == "__main__":
    main()
