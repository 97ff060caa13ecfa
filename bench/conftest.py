"""Benchmarks: inputs are built outside the timed region; names are unique.

Each benchmark times a batch of calls (``_inputs.BATCH``) so that the
harness's own overhead per round is negligible; the per-call figure is the
batch time divided by the batch size.  Implementations and peers are
measured in the same run, so their ratios hold on a noisy machine.

    .venv/bin/pytest bench/ --benchmark-enable --benchmark-columns=median,iqr
    .venv/bin/python bench/report.py      # the table in docs/performance.md
"""

import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # tests.kamailio_harness
