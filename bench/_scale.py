"""Plan stores of N numbers x R rules for the scale benchmarks, and the processes they start.

Sizes come from the environment, so that CI runs small ones and the
million-number run is one command (docs/performance.md, "Scale benchmarks"):

    TEL400_BENCH_NUMBERS   numbers in the store (default 10,000)
    TEL400_BENCH_RULES     rules per number (default 5)
    TEL400_BENCH_DIR       where generated files and stores are kept between
                           runs (default: a fresh temporary directory)

Run as a script, this module is the routing process the benchmarks start::

    python bench/_scale.py cold-start sqlite:////tmp/plans.db 4000000000
    python bench/_scale.py watch sqlite:////tmp/plans.db 4000000007

``cold-start`` opens the store, builds a router with the streamed cold start
(``Router.from_store``), routes one call and prints one JSON line (seconds,
resident memory).  ``watch`` does the same, prints ``ready``, then polls an
incremental PlanWatcher and prints one JSON line when the watched number's
edit has been applied (when, and the CPU the applying poll cost this process).
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys
import time

BENCH = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import generate  # noqa: E402

from _inputs import TUESDAY_10 as AT  # noqa: E402  (the call every routing process makes)

CALLER = "13901012345"


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    value = int(raw.replace("_", "").replace(",", ""))
    if value < 1:
        raise ValueError(f"{name}: expected a whole number of at least 1, got {raw!r}")
    return value


def numbers_from_env() -> int:
    return env_int("TEL400_BENCH_NUMBERS", 10_000)


def rules_from_env() -> int:
    return env_int("TEL400_BENCH_RULES", 5)


def kept_dir(tmp_path_factory, name: str) -> pathlib.Path:
    """``TEL400_BENCH_DIR`` (created if missing), where generated files and stores are kept
    between runs; without it, a fresh temporary directory called ``name``."""
    kept = os.environ.get("TEL400_BENCH_DIR")
    if kept:
        path = pathlib.Path(kept)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp(name)


def jsonl_file(directory: pathlib.Path, numbers: int, rules: int) -> pathlib.Path:
    """The generated plans, written once per size and kept in ``directory``."""
    path = directory / f"plans-{numbers}x{rules}.jsonl"
    if not path.exists():
        partial = path.with_suffix(".partial")
        generate.write_jsonl_file(str(partial), numbers, rules)
        partial.rename(path)
    return path


def cli_import(source: pathlib.Path, db: pathlib.Path, *, workers: int | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """``tel400 store import source sqlite:////db [--workers N]`` in a process of its own;
    returns the finished process and the CPU seconds it and its workers spent."""
    options = [] if workers is None else ["--workers", str(workers)]
    before = _children_cpu()
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from tel400.cli import main; sys.exit(main())",
         "store", "import", str(source), f"sqlite:///{db}", *options],
        capture_output=True, text=True,
    )
    return result, _children_cpu() - before


def _children_cpu() -> float:
    """User + system CPU seconds of this process's waited-for children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build_store(directory: pathlib.Path, numbers: int, rules: int) -> pathlib.Path:
    """An SQLite store of the generated plans, filled by ``tel400 store import`` of the
    JSON Lines and kept in ``directory`` for the next run."""
    db = directory / f"plans-{numbers}x{rules}.db"
    if db.exists():
        return db
    source = jsonl_file(directory, numbers, rules)
    partial = db.with_suffix(".partial.db")
    partial.unlink(missing_ok=True)
    result, _ = cli_import(source, partial)
    if result.returncode != 0:
        raise RuntimeError(f"tel400 store import failed: {result.stderr.strip()}")
    partial.rename(db)
    return db


def edited_plan(i: int, rules: int, version: int) -> dict:
    """Number ``i``'s generated plan with a first rule that takes every call to a target naming ``version``."""
    plan = generate.number_plan(i, rules)
    plan["rules"].insert(0, {"name": "edited", "targets": [f"1380000{version:04d}"]})
    return plan


def next_edit_version(store, i: int) -> int:
    """A version for :func:`edited_plan` that differs from the one number ``i`` has in ``store``
    (a kept store may hold an earlier run's edit, and an edit to the same plan changes no route)."""
    stored = store.get_number(generate.number_of(i)) or {}
    first = (stored.get("rules") or [{}])[0]
    if first.get("name") != "edited":
        return 1
    target = first["targets"][0]
    target = target["to"] if isinstance(target, dict) else target  # stored in canonical form
    return int(target[-4:]) % 9999 + 1


def rss_bytes() -> tuple[int, int]:
    """This process's resident set now and at its peak (VmRSS, VmHWM)."""
    fields = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def open_router(url: str):
    """The router a routing process builds from the store, streamed (``Router.from_store``),
    and the store: (router, store)."""
    import tel400

    store = tel400.open_store(url, create=False)
    return tel400.Router.from_store(store), store


def child_cold_start(url: str, number: str) -> None:
    t0 = time.perf_counter()
    router, _ = open_router(url)
    decision = router.route(number, CALLER, AT)
    seconds = time.perf_counter() - t0
    rss, hwm = rss_bytes()
    print(json.dumps({"seconds": seconds, "rss": rss, "hwm": hwm,
                      "action": decision.action}), flush=True)


def child_watch(url: str, number: str) -> None:
    """Route, say ready, then poll until ``number`` routes to an edited target; report when and the CPU."""
    import tel400

    router, store = open_router(url)
    watcher = tel400.PlanWatcher(router, store, interval_s=0.05, version=router.plans_version)
    before = router.route(number, CALLER, AT).targets
    print("ready", flush=True)
    while True:
        cpu0 = time.process_time()
        applied = watcher.poll()
        cpu = time.process_time() - cpu0
        if applied:
            targets = router.route(number, CALLER, AT).targets
            if targets != before:
                print(json.dumps({"seen": time.time(), "cpu_s": cpu, "targets": list(targets)}), flush=True)
                return
        time.sleep(0.005)


def quiet_logs() -> None:
    """Warnings and errors to stderr: stdout carries only this process's reports."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))


if __name__ == "__main__":
    command, url, number = sys.argv[1:4]
    quiet_logs()
    {"cold-start": child_cold_start, "watch": child_watch}[command](url, number)
