"""CPU-seconds the `hubstack` command costs before it does anything: every call builds its
parser, which imports every command module. Measured in the same run, round after round:

- `hubstack --help` (python -m hubstack --help): what each call costs now;
- the same imports plus the hub's own layers (hubstack.hub.setup: the login sources and,
  through them, oauthenticator, jsonschema and JupyterHub's database layer), which every
  call imported until envreport stopped importing hubstack.hub.setup: the baseline;
- `python -c pass`: the interpreter's floor.

    PYTHONPATH=$PWD python3 benchmarks/cli/run.py [--rounds 5]

How large the gap is depends on the environment: where rfc3987-syntax is installed (pip
brings it with jupyterhub, through jupyter-events and jsonschema[format-nongpl], as in
the test environment and bin/hubstack's .venv), jsonschema builds its parsers at import.
The figure is printed with the answer to "is it installed here". Nothing is written.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import statistics
import subprocess
import sys
import time

RUNS = {
    "hubstack --help": [sys.executable, "-m", "hubstack", "--help"],
    "+ the hub's layers (baseline)": [
        sys.executable,
        "-c",
        "from hubstack.cli import build_parser; build_parser(); import hubstack.hub.setup",
    ],
    "python -c pass (floor)": [sys.executable, "-c", "pass"],
}


def measure(cmd: list[str]) -> tuple[float, float]:
    """CPU-seconds (user + system) and wall seconds of one run of CMD."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for cmd in RUNS.values():
        measure(cmd)  # warm: the page cache and any byte-code the environment writes
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in RUNS}
    for _ in range(args.rounds):
        for name, cmd in RUNS.items():
            figures[name].append(measure(cmd))
    installed = importlib.util.find_spec("rfc3987_syntax") is not None
    print(f"rfc3987-syntax installed in this environment: {'yes' if installed else 'no'}")
    print(f"{'':34} {'CPU-s p50':>10} {'wall s p50':>11}  ({args.rounds} rounds)")
    cpu = {}
    for name, runs in figures.items():
        cpu[name] = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"{name:34} {cpu[name]:10.2f} {wall:11.2f}")
    now, baseline = cpu["hubstack --help"], cpu["+ the hub's layers (baseline)"]
    print(f"hubstack --help ÷ baseline: {now / baseline:.2f} (CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
