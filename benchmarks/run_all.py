"""Run every benchmark script ``benchmarks/bench_*.py`` in turn (``./dev.sh bench``).

Each script runs in its own Python process, with this interpreter, from the
repository root, so one script's imports, threads or compiled caches do not
colour the next one's timings. Output goes to the terminal as the scripts print
it. Arguments::

    python benchmarks/run_all.py                 # every bench_*.py
    python benchmarks/run_all.py speed pymc      # only bench_speed*.py and bench_pymc*.py
    python benchmarks/run_all.py --list          # the scripts it would run
    python benchmarks/run_all.py -- --quick      # pass "--quick" on to every script

The exit status is the number of scripts that failed (0 when all succeeded).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def scripts(filters: list[str]) -> list[Path]:
    found = sorted(HERE.glob("bench_*.py"))
    if filters:
        found = [p for p in found if any(p.stem.startswith(f"bench_{f}") for f in filters)]
    return found


def main(argv: list[str]) -> int:
    passthrough: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, passthrough = argv[:i], argv[i + 1 :]
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return 0
    listing = "--list" in argv
    filters = [a for a in argv if not a.startswith("-")]
    todo = scripts(filters)
    if not todo:
        print(f"run_all: no benchmarks/bench_*.py matches {filters}", file=sys.stderr)
        return 1
    if listing:
        print("\n".join(str(p.relative_to(ROOT)) for p in todo))
        return 0
    failed = []
    for path in todo:
        rel = path.relative_to(ROOT)
        print(f"\n=== {rel} {' '.join(passthrough)}".rstrip(), flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, str(path), *passthrough], cwd=ROOT)
        print(f"=== {rel}: exit {code}, {time.perf_counter() - t0:.0f} s", flush=True)
        if code != 0:
            failed.append(str(rel))
    if failed:
        print(f"\nrun_all: {len(failed)} benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
    return len(failed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
