"""``python -m hdl.bench lstm`` on a tiny stacked LSTM with projection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def test_bench_lstm_json():
    """A 2-layer LSTM with projection (the bench's --layers / --proj)."""
    proc = subprocess.run(
        [sys.executable, "-m", "hdl.bench", "lstm", "--hidden", "10", "--input", "6",
         "--layers", "2", "--proj", "4", "--density", "0.3", "--pes", "3", "--lanes", "2",
         "--fifo", "4", "--steps", "5", "--seed", "2", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert r["matches_golden"] is True and r["matches_model"] is True
    assert (r["layers"], r["proj"]) == (2, 4)
    assert r["cycles_per_step"] == pytest.approx(r["matvec_cycles_per_step"]
                                                 + r["elementwise_cycles_per_step"])
    assert r["ideal_cycles_per_step"] <= r["matvec_cycles_per_step"]
    assert r["elementwise_unit_cycles_per_step"] == 4 * 5 + 5 + 2
    assert len(r["mac_cycles"]) == len(r["projection_mac_cycles"]) == 2 * 5
    assert min(r["projection_mac_cycles"]) > 0
    for key in ("dense_ops_per_cycle", "elementwise_ratio", "total_cycles"):
        assert key in r


def test_bench_lstm_rejects_bad_arguments():
    import argparse

    from hdl.bench.lstm import add_arguments
    parser = add_arguments(argparse.ArgumentParser())
    for bad in (["--pes", "0"], ["--density", "1.5"], ["--lanes", "3"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
