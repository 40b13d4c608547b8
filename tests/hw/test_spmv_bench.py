"""``python -m hdl.bench spmv`` on a tiny layer (one small Verilator build)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def test_bench_spmv_json():
    proc = subprocess.run(
        [sys.executable, "-m", "hdl.bench", "spmv", "--rows", "37", "--cols", "29",
         "--density", "0.3", "--act-density", "0.6", "--pes", "2", "--fifo", "3",
         "--balance", "--seed", "4", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["matches_golden"] is True
    assert result["rtl_cycles"] == result["model_cycles"]
    assert result["ideal_cycles"] <= result["rtl_cycles"]
    for key in ("ratio", "load_balance_efficiency", "sim_cycles_per_second",
                "wall_seconds"):
        assert key in result


def test_bench_spmv_rejects_bad_arguments():
    from hdl.bench.__main__ import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["spmv", "--pes", "0"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["spmv", "--density", "1.5"])
