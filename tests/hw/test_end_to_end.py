"""End to end on the real RTL: compress a bundled model, run the simulated board (hdl/top.py's
SpineCore under Verilator, UART bridged to TCP by hdl/sim_harness.cpp), load it with the host
driver over ``socket://``, stream inputs and compare every output bit for bit with the golden
model.  The Verilator build is cached (build/sim), so only the first run pays for it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from hdl.sim import SimBoard, board_top, build_harness, free_port
from host.driver import Accelerator
from host.driver_errors import ModelMismatchError
from host.golden import GoldenModel
from host.modelsource import resolve_model
from host.package import save_package
from host.pipeline import CompressConfig, compress_model
from host.protocol import Command, pack_request

N_INPUTS = 150


def compressed_workload(tmp_path_factory, kind, density, folder, n_inputs, acc_bits=32):
    """A bundled digits model compressed for 8 PEs and saved as .spn, with test inputs.

    Parameters
    ----------
    tmp_path_factory : pytest.TempPathFactory
        Where the package is saved (a new folder named ``folder``).
    kind : str
        ``"mlp"``, ``"lstm"`` or ``"cnn"``: the model ``digits-<kind>``, saved as
        ``<kind>.spn``.
    density : float or None
        The pruning density; None takes the model's default (0.25 if it has none), as
        ``python -m host.compress digits-<kind> --pes 8`` does.
    folder : str
        The temporary folder's name.
    n_inputs : int
        How many test inputs and labels to keep.
    acc_bits : int
        Accumulator bits (16: the compressor chooses a product shift).

    Returns
    -------
    dict
        ``model`` (the compressed model), ``path`` (its .spn), ``x`` and ``y`` (the first
        ``n_inputs`` test inputs and labels), ``source`` (the resolved model source) and
        ``folder``.
    """
    source = resolve_model(f"digits-{kind}")
    if density is None:
        density = source.defaults.get("density", 0.25)
    result = compress_model(source.model, CompressConfig(n_pe=8, density=density,
                                                         acc_bits=acc_bits),
                            calib_x=source.train[0])
    folder = tmp_path_factory.mktemp(folder)
    path = folder / f"{kind}.spn"
    save_package(result.model, path)
    x, y = source.test
    return {"model": result.model, "path": path, "x": x[:n_inputs], "y": y[:n_inputs],
            "source": source, "folder": folder}


def icebreaker_harness(model, pe_group=None):
    """The Verilator harness of the icebreaker board's top for ``model`` (cached in
    build/sim).

    Parameters
    ----------
    model : CompressedModel or Path
        The model (or its .spn) the board's engine is sized for.

    Returns
    -------
    The build of :func:`hdl.sim.build_harness`, for :class:`hdl.sim.SimBoard`.
    """
    # The icebreaker profile (clock, baud) as ``host.run --sim``'s default, so the CLI tests
    # share these Verilator builds; the simulated core does not depend on the FPGA.
    component, rx, tx, cpb = board_top("icebreaker", model, pe_group=pe_group)
    return build_harness(component, clocks_per_bit=cpb, rx=rx, tx=tx,
                         name="icebreaker" if pe_group is None else f"icebreaker_g{pe_group}")


def timed_cycle_stream(acc, x):
    """Quantize ``x`` and stream it with cycle counts (window 2), timed.

    Parameters
    ----------
    acc : host.driver.Accelerator
        A connected accelerator with the model loaded.
    x : numpy.ndarray
        Float inputs, one per inference.

    Returns
    -------
    tuple
        ``(q, got, seconds, infers, stats)``: the quantized inputs, the ``(outputs, cycles)``
        pairs, the wall time of the stream, the INFER runs the board counted during the
        stream (its STATUS counter's difference, so earlier tests on the same board do not
        matter) and the link's statistics.
    """
    q = acc.quantize(x)
    before = acc.status().infers
    start = time.monotonic()
    got = list(acc.stream_int(q, window=2, cycles=True))
    seconds = time.monotonic() - start
    return q, got, seconds, acc.status().infers - before, acc.link.stats


def load_verified(acc, path):
    """Load the package at ``path`` and check the driver's read-back report: every block but
    the first CONTROL write (overwritten at the end) was compared, none skipped or rewritten."""
    acc.load(path, progress=False)
    report = acc.last_load["verify"]
    assert report["skipped"] == [] and report["rewritten"] == []
    assert report["verified"] == acc.last_load["blocks"] - 1


def rows_differing(out, want):
    """How many rows of ``out`` differ from ``want`` in at least one element."""
    return int(np.count_nonzero((out != want).any(axis=1)))


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    """digits-mlp compressed for 8 PEs, saved as .spn, with test inputs and labels."""
    return compressed_workload(tmp_path_factory, "mlp", 0.2, "e2e", N_INPUTS)


@pytest.fixture(scope="module")
def build(workload):
    return icebreaker_harness(workload["model"])


@pytest.fixture(scope="module")
def board(build):
    with SimBoard(build) as running:
        yield running


def expected(model, x):
    golden = GoldenModel(model)
    return golden.forward_int(golden.quantize_input(x))


def test_stream_bit_exact(board, workload):
    model, x, y = workload["model"], workload["x"], workload["y"]
    with Accelerator(board.url, timeout=5.0) as acc:
        info = acc.identify()
        assert info.kind == "SPMV" and info.hash_ok and info.n_pe == 8
        acc.load(workload["path"], progress=False)
        report = acc.last_load["verify"]
        before = acc.status().infers
        start = time.monotonic()
        got = list(acc.stream(x))
        seconds = time.monotonic() - start
        infers = acc.status().infers - before
        stats = acc.link.stats
    assert len(got) == len(x) >= 100
    out = np.stack(got)
    want = expected(model, x)
    mismatches = rows_differing(out, want)
    assert mismatches == 0, f"{mismatches} of {len(x)} outputs differ from the golden model"
    assert infers == len(x)
    assert stats.retries == 0 and stats.bad_crc == 0
    # Every block was read back from the engine's memories (only the first CONTROL write,
    # overwritten at the end, is not compared) and none needed a second write.
    assert report["skipped"] == [] and report["rewritten"] == []
    assert report["verified"] == acc.last_load["blocks"] - 1
    accuracy = float(np.mean(out.argmax(axis=1) == y))
    assert accuracy > 0.8
    print(f"\n{len(x)} inferences in {seconds:.2f} s ({len(x) / seconds:.1f}/s), "
          f"accuracy {accuracy:.3f}, link {stats.as_dict()}")


@pytest.mark.slow
def test_acc16_board_stream_bit_exact(tmp_path_factory):
    """digits-mlp compressed for 16-bit accumulators (product shift 14) on a simulated
    icebreaker board built for it (its own harness build): IDENTIFY reports the shift, the
    32-bit package is refused naming it, the 16-bit one streams bit-exactly."""
    work = compressed_workload(tmp_path_factory, "mlp", 0.2, "e2e16", 60, acc_bits=16)
    wide = compressed_workload(tmp_path_factory, "mlp", 0.2, "e2e32", 1)
    model, x = work["model"], work["x"]
    assert model.product_shift == 14
    with SimBoard(icebreaker_harness(model)) as running, \
            Accelerator(running.url, timeout=5.0) as acc:
        info = acc.identify()
        assert info.hash_ok and info.acc_bits == 16 and info.product_shift == 14
        with pytest.raises(ModelMismatchError, match="product shift: model 0, engine 14"):
            acc.load(wide["model"], progress=False)
        acc.load(work["path"], progress=False)
        out = np.stack(list(acc.stream(x)))
    assert rows_differing(out, expected(model, x)) == 0
    assert np.mean(out.argmax(axis=1) == work["y"]) > 0.8


def test_pipelined_stream_is_exact(board, workload):
    """window 4: exact results whether the bitstream's receive FIFO holds pipelined requests
    (no retries) or not (the link falls back to one in flight and re-sends)."""
    model, x = workload["model"], workload["x"][:40]
    with Accelerator(board.url, timeout=5.0) as acc:
        acc.load(model, progress=False)
        got = list(acc.stream(x, window=4))
        stats = acc.link.stats
    assert len(got) == len(x)
    assert np.array_equal(np.stack(got), expected(model, x))
    assert stats.retries == 0 or (stats.window_drops == 1 and acc.link.window_limit == 1)


def test_attach_after_reconnect_and_single_infer(board, workload):
    """A second client finds the model loaded by the first (CONTROL verified) and infers."""
    model, x = workload["model"], workload["x"][:3]
    with Accelerator(board.url, timeout=5.0) as acc:
        acc.load(model, progress=False)
    with Accelerator(board.url, timeout=5.0) as acc:
        acc.attach(model)
        assert np.array_equal(acc.infer(x[0]), expected(model, x[:1])[0])
        assert acc.last_cycles > 0


def test_disconnect_mid_frame_then_next_client(board, workload):
    """A client that vanishes half way through a frame leaves the board usable."""
    frame = pack_request(Command.IDENTIFY, 9, b"")
    host, port = board.url.removeprefix("socket://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(pack_request(Command.WRITE, 1, bytes(200))[:50])
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(frame[:3])
    with Accelerator(board.url, timeout=2.0, retries=3) as acc:
        assert acc.identify().n_pe == 8
        acc.load(workload["model"], progress=False)
        x = workload["x"][:5]
        assert np.array_equal(acc.infer(x), expected(workload["model"], x))


def test_board_stopped_mid_session_is_a_link_error(build):
    from host.driver_errors import LinkError

    second = SimBoard(build).start()
    with Accelerator(second.url, timeout=0.5, retries=1) as acc:
        assert acc.identify().n_pe == 8
        second.stop()
        with pytest.raises(LinkError, match="was it stopped"):
            acc.status()


def test_model_for_other_engine_is_refused(board, workload):
    source = workload["source"]
    other = compress_model(source.model, CompressConfig(n_pe=4, density=0.2),
                           calib_x=source.train[0]).model
    with Accelerator(board.url, timeout=5.0) as acc, \
            pytest.raises(ModelMismatchError, match="PE count: model 4, engine 8"):
        acc.load(other, progress=False)


def test_run_cli_against_board(board, workload, tmp_path):
    x_path, y_path = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x_path, workload["x"][:40].astype(np.float32))
    np.save(y_path, workload["y"][:40])
    out_path = tmp_path / "out.npy"
    proc = subprocess.run(
        [sys.executable, "-m", "host.run", "--port", board.url, "--model",
         str(workload["path"]), "--input", str(x_path), "--labels", str(y_path), "--check",
         "--json", "--output", str(out_path)],
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["inferences"] == 40 and report["mismatches"] == 0
    assert report["throughput_per_s"] > 0 and 0.8 < report["accuracy"] <= 1
    assert np.array_equal(np.load(out_path), expected(workload["model"], workload["x"][:40]))


def test_sim_cli_preloads_model(build, workload):
    """``python -m hdl.sim --model`` builds (cached), preloads and serves; SIGTERM stops it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hdl.sim", "--board", "icebreaker",
                             "--model", str(workload["path"]), "--listen",
                             f"127.0.0.1:{port}"], stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "ready" in line:
                break
        assert any("loaded" in line for line in lines), lines
        with Accelerator(f"socket://127.0.0.1:{port}", timeout=5.0) as acc:
            acc.attach(workload["model"])
            x = workload["x"][:4]
            assert np.array_equal(acc.infer(x), expected(workload["model"], x))
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert '"cycles"' in out


@pytest.mark.slow
def test_harness_echo_raw_bytes():
    """The harness alone, on a UART echo top (tests/hw/echo_top.py): bytes round-trip exactly,
    back to back, across sequential clients (the second waits in the backlog)."""
    from echo_top import EchoTop

    echo = build_harness(EchoTop(4, depth=512), clocks_per_bit=4, name="echo")
    with SimBoard(echo) as running:
        host, port = running.url.removeprefix("socket://").rsplit(":", 1)
        data = bytes(range(256)) * 8   # the echo's TX is 1 clock per byte slower than RX
        first = socket.create_connection((host, int(port)))
        second = socket.create_connection((host, int(port)))   # queued until first closes
        first.sendall(data)
        got = b""
        first.settimeout(10)
        while len(got) < len(data):
            got += first.recv(65536)
        assert got == data
        first.close()
        second.settimeout(10)
        second.sendall(b"hello")
        got = b""
        while len(got) < 5:
            got += second.recv(16)
        assert got == b"hello"
        second.close()
    assert running.stats["framing_errors"] == 0


# ------------------------------------------------------------------------------------------------
# PE pairs: digits-mlp on the iCEBreaker's engine, whose 8 PEs run in lockstep pairs (pe_group 2)

N_PAIR_INPUTS = 24


def test_pairs_stream_bit_exact(workload):
    """The board's pe_group 2: IDENTIFY reports it, the driver pads the model per pair, every
    loaded word reads back (a follower's entries and pointer words come from its leader), every
    output is bit-exact and every run's cycle count equals the cycle model on the padded
    encoding with the board's broadcast FIFO depth."""
    from boards import get_board
    from host.driver import _spmv_params, expected_cycles
    from host.spmv_image import build_image, expected_run

    model, x = workload["model"], workload["x"][:N_PAIR_INPUTS]
    with SimBoard(icebreaker_harness(workload["model"])) as board, \
            Accelerator(board.url, timeout=5.0) as acc:
        info = acc.identify()
        assert info.kind == "SPMV" and info.hash_ok and info.pe_group == 2
        load_verified(acc, workload["path"])
        q, got, seconds, infers, stats = timed_cycle_stream(acc, x)
    out = np.stack([o for o, _ in got])
    assert rows_differing(out, expected(model, x)) == 0
    assert infers == len(x)
    # IDENTIFY reports the board's broadcast FIFO depth (a late extension word, 4 != 8), so
    # the driver's parameters alone predict every cycle count.
    assert info.late_params() == {"fifo_depth": get_board("icebreaker").fifo_depth} != {
        "fifo_depth": 8}
    params = _spmv_params(info)
    image = build_image(params, list(model.layers))
    cycles = [c for _, c in got]
    assert cycles == [expected_run(params, image, s).cycles for s in q]
    assert cycles == list(expected_cycles(model, info, q))
    solo = build_image(replace(params, pe_group=1), list(model.layers))
    solo_cycles = [expected_run(replace(params, pe_group=1), solo, s).cycles for s in q]
    print(f"\npairs: {len(x)} inferences, {np.mean(cycles):.1f} cycles each "
          f"(solo PEs: {np.mean(solo_cycles):.1f})")


# ------------------------------------------------------------------------------------------------
# The LSTM: digits-lstm on the LSTM engine's board (hdl.top.LstmBackend), one more Verilator build

N_LSTM_INPUTS = 150


@pytest.fixture(scope="module")
def lstm_workload(tmp_path_factory):
    """digits-lstm compressed for 8 PEs (its default density 0.25, as ``python -m
    host.compress digits-lstm --pes 8``), saved as .spn, with test inputs and labels."""
    return compressed_workload(tmp_path_factory, "lstm", None, "e2e-lstm", N_LSTM_INPUTS)


@pytest.fixture(scope="module")
def lstm_board(lstm_workload):
    with SimBoard(icebreaker_harness(lstm_workload["path"])) as running:
        yield running


def test_lstm_stream_bit_exact(lstm_board, lstm_workload):
    """Every class score bit-exact with the golden model, every run's cycle count equal to the
    LSTM cycle model (host.lstm_cycles via host.lstm_image.expected_run)."""
    from boards import get_board
    from hdl.build import board_model_engine, make_engine
    from host.driver import expected_cycles
    from host.lstm_image import build_image, expected_run

    model, x, y = lstm_workload["model"], lstm_workload["x"], lstm_workload["y"]
    with Accelerator(lstm_board.url, timeout=5.0) as acc:
        info = acc.identify()
        assert info.kind == "LSTM" and info.hash_ok and info.n_pe == 8
        load_verified(acc, lstm_workload["path"])
        q, got, seconds, infers, stats = timed_cycle_stream(acc, x)
    assert len(got) == len(x) >= 100
    out = np.stack([o for o, _ in got])
    want = GoldenModel(model).forward_int(q)
    mismatches = rows_differing(out, want)
    assert mismatches == 0, f"{mismatches} of {len(x)} outputs differ from the golden model"
    assert infers == len(x)
    assert stats.bad_crc == 0
    engine = make_engine(board_model_engine(get_board("icebreaker"), model))
    engine._MustUse__silence = True
    image = build_image(engine, model.layers[0], model.layers[1])
    cycles = [c for _, c in got]
    assert cycles == [expected_run(engine, image, s).cycles.total for s in q]
    # The driver predicts the same from IDENTIFY alone: FIFO depth 1, one lane, serial unit.
    assert info.late_params() == {"fifo_depth": engine.fifo_depth, "ew_lanes": engine.ew_lanes,
                                  "overlap": int(engine.overlap)}
    assert cycles == list(expected_cycles(model, info, q))
    accuracy = float(np.mean(out.argmax(axis=1) == y))
    assert accuracy > 0.9
    print(f"\nLSTM: {len(x)} inferences in {seconds:.2f} s ({len(x) / seconds:.1f}/s), "
          f"{np.mean(cycles):.0f} cycles each, accuracy {accuracy:.3f}, link {stats.as_dict()}")


def test_lstm_state_bit_exact(lstm_board, lstm_workload, tmp_path):
    """``infer(x, state=True)`` / ``read_state()``: the final hidden state h_T read from the
    STATE region after each run equals the golden model's LSTM output (its layer_forward
    through the LSTM layer) bit for bit, the floats are the integers times 2**-frac; before
    any inference read_state() is refused; ``host.run --state`` saves the same integers."""
    from host.errors import SpineError

    model = lstm_workload["model"]
    x = lstm_workload["x"][:6]
    golden = GoldenModel(model)
    q = golden.quantize_input(x)
    lstm = model.layers[0]
    want = golden.layer_forward(lstm, q)
    assert want.shape == (len(x), lstm.output_size) and np.count_nonzero(want) > 0
    frac = model.act_format.frac
    with Accelerator(lstm_board.url, timeout=5.0) as acc:
        acc.load(model, progress=False)
        with pytest.raises(SpineError, match="no inference has run .* call infer"):
            acc.read_state()
        out, state = acc.infer(x, state=True)
        assert np.array_equal(out, golden.forward_int(q))
        assert state.ints.shape == want.shape
        mismatches = rows_differing(state.ints, want)
        assert mismatches == 0, f"{mismatches} of {len(x)} h_T differ from the golden model"
        assert np.array_equal(state.values, want * 2.0 ** -frac)
        one, single = acc.infer(x[2], state=True)           # one input: (S,)
        assert np.array_equal(one, out[2]) and np.array_equal(single.ints, want[2])
        list(acc.stream(x[:3], window=1))                   # STATE: the last run's h_T
        assert np.array_equal(acc.read_state().ints, want[2])
    x_path, h_path = tmp_path / "x.npy", tmp_path / "h.npy"
    np.save(x_path, x[:4].astype(np.float32))
    proc = subprocess.run(
        [sys.executable, "-m", "host.run", "--port", lstm_board.url, "--model",
         str(lstm_workload["path"]), "--input", str(x_path), "--check", "--json", "--state",
         str(h_path)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state_mismatches"] == 0
    assert np.array_equal(np.load(h_path), golden.layer_forward(
        lstm, golden.quantize_input(x[:4].astype(np.float32))))


@pytest.mark.parametrize("kind", ["mlp", "lstm"])
def test_verify_finds_a_word_overwritten_after_the_load(kind, request):
    """On the real RTL: a word changed through WRITE after the load is found by verify(),
    which names its block, region, PE and address; loading again repairs it."""
    from host.driver import model_image, pack_words
    from host.driver_errors import VerifyError
    from host.protocol import RegionId

    running = request.getfixturevalue("board" if kind == "mlp" else "lstm_board")
    model = request.getfixturevalue("workload" if kind == "mlp" else "lstm_workload")["model"]
    with Accelerator(running.url, timeout=5.0) as acc:
        acc.load(model, progress=False)
        blocks = model_image(model, acc.identify())
        entries = next(b for b in blocks if b.name == "entries of PE 5")
        wrong, wb = int(entries.words[9]) ^ 0x11, entries.word_bytes
        acc.write(RegionId.ENTRY, 5, 9, pack_words([wrong], wb))
        with pytest.raises(VerifyError, match=r"entries of PE 5 \(region ENTRY, PE 5\).*"
                                              rf"word 9 reads back 0x{wrong:0{2 * wb}X}") \
                as error:
            acc.verify(model)
        assert (error.value.region, error.value.index, error.value.address) == (
            RegionId.ENTRY, 5, 9)
        bias = next(b for b in blocks if b.name == "biases")
        acc.write(RegionId.BIAS, 0, 2, pack_words([int(bias.words[2]) + 1], bias.word_bytes))
        acc.load(model, progress=False)
        assert acc.verify(model)["verified"] == len(blocks) - 1


def test_verify_finds_a_corrupted_table_word(lstm_board, lstm_workload):
    """On the real RTL: the activation tables (region TABLE, loaded from the model's
    table_spec) are verified like every other region: a tanh word of the cell table changed
    after the load is found by verify() with its address, a wrong table changes the
    results, and loading again repairs both."""
    from host.driver import model_image, pack_words
    from host.driver_errors import VerifyError
    from host.memory_map import table_layout
    from host.protocol import RegionId

    model = lstm_workload["model"]
    x = lstm_workload["x"][:8]
    golden = GoldenModel(model)
    with Accelerator(lstm_board.url, timeout=5.0) as acc:
        acc.load(model, progress=False)
        blocks = model_image(model, acc.identify())
        tables = next(b for b in blocks if b.region == RegionId.TABLE)
        assert tables.address == 0 and len(tables.words) == table_layout(
            model.table_spec)["words"]
        k = table_layout(model.table_spec)["cell"] + 3           # tanh in the cell table
        wrong, wb = int(tables.words[k]) ^ 0x40, tables.word_bytes
        acc.write(RegionId.TABLE, 0, k, pack_words([wrong], wb))
        with pytest.raises(VerifyError, match=r"activation tables .*\(region TABLE\).*"
                                              rf"word {k} reads back 0x{wrong:0{2 * wb}X}") \
                as error:
            acc.verify(model)
        assert (error.value.region, error.value.address) == (RegionId.TABLE, k)
        # the hardware reads the loaded table: all-zero tanh -> h = 0 -> outputs = bias only
        cell = table_layout(model.table_spec)["cell"]
        step = min(128, model.table_spec.entries)
        for start in range(0, model.table_spec.entries, step):
            acc.write(RegionId.TABLE, 0, cell + start, pack_words(np.zeros(step, np.int64), wb))
        assert not np.array_equal(acc.infer(x), golden.forward_int(golden.quantize_input(x)))
        acc.load(model, progress=False)
        assert acc.verify(model)["verified"] == len(blocks) - 1
        assert np.array_equal(acc.infer(x), golden.forward_int(golden.quantize_input(x)))


def test_mlp_and_lstm_boards_refuse_each_others_models(board, lstm_board, workload,
                                                       lstm_workload):
    with Accelerator(lstm_board.url, timeout=5.0) as acc, \
            pytest.raises(ModelMismatchError, match="does not start with an LSTM layer"):
        acc.load(workload["model"], progress=False)
    with Accelerator(board.url, timeout=5.0) as acc, \
            pytest.raises(ModelMismatchError, match="layer 0 is lstm.*LSTM engine"):
        acc.load(lstm_workload["model"], progress=False)


# ------------------------------------------------------------------------------------------------
# The CNN: digits-cnn on the CNN engine's board (hdl.top.CnnBackend), one more Verilator build

N_CNN_INPUTS = 150


@pytest.fixture(scope="module")
def cnn_workload(tmp_path_factory):
    """digits-cnn compressed for 8 PEs (its default density, as ``python -m host.compress
    digits-cnn --pes 8``), saved as .spn, with test inputs and labels."""
    return compressed_workload(tmp_path_factory, "cnn", None, "e2e-cnn", N_CNN_INPUTS)


@pytest.fixture(scope="module")
def cnn_board(cnn_workload):
    with SimBoard(icebreaker_harness(cnn_workload["path"])) as running:
        yield running


def test_cnn_stream_bit_exact(cnn_board, cnn_workload):
    """IDENTIFY says CNN and the driver rebuilds the engine's CnnConfig from it; the load is
    verified block by block; every output is bit-exact with the golden model and every run's
    cycle count equals the CNN cycle model (host.cnn_cycles with the engine's timing)."""
    from boards import get_board
    from hdl.build import board_model_engine, make_engine
    from hdl.build import cnn_config as build_config
    from host.cnn_cycles import expected_runs
    from host.cnn_image import build_image
    from host.driver import cnn_config

    model, x, y = cnn_workload["model"], cnn_workload["x"], cnn_workload["y"]
    params = board_model_engine(get_board("icebreaker"), model)
    with Accelerator(cnn_board.url, timeout=5.0) as acc:
        info = acc.identify()
        assert info.kind == "CNN" and info.hash_ok and info.n_pe == 8
        config = cnn_config(info)
        assert config == build_config(params)
        load_verified(acc, cnn_workload["path"])
        q, got, seconds, infers, stats = timed_cycle_stream(acc, x)
    assert len(got) == len(x) >= 100
    out = np.stack([o for o, _ in got])
    want = GoldenModel(model).forward_int(q)
    mismatches = rows_differing(out, want)
    assert mismatches == 0, f"{mismatches} of {len(x)} outputs differ from the golden model"
    assert infers == len(x)
    assert stats.bad_crc == 0
    engine = make_engine(params)
    engine._MustUse__silence = True
    runs = expected_runs(config, build_image(config, model), model, q, engine.timing())
    cycles = [c for _, c in got]
    assert cycles == [run.cycles for run in runs]
    accuracy = float(np.mean(out.argmax(axis=1) == y))
    assert accuracy > 0.9
    print(f"\nCNN: {len(x)} inferences in {seconds:.2f} s ({len(x) / seconds:.1f}/s), "
          f"{np.mean(cycles):.0f} cycles each, accuracy {accuracy:.3f}, link {stats.as_dict()}")


@pytest.mark.parametrize("kind", ["lstm", "cnn"])
def test_single_infer_and_zero_input(kind, request):
    """One float input through infer(); an all-zero input is exact too (on the LSTM an empty
    x list, on the CNN a map with nothing broadcast).  The stream tests count only the
    inferences of their own stream, so this test may run before or after them."""
    running = request.getfixturevalue(f"{kind}_board")
    workload = request.getfixturevalue(f"{kind}_workload")
    model = workload["model"]
    with Accelerator(running.url, timeout=5.0) as acc:
        acc.load(model, progress=False)
        x0 = workload["x"][0]
        assert np.array_equal(acc.infer(x0), expected(model, x0[None])[0])
        zero = np.zeros((1, *model.input_shape))
        assert np.array_equal(acc.infer(zero), expected(model, zero))


def test_cnn_verify_finds_overwritten_words(cnn_board, cnn_workload):
    """A descriptor field and an entry changed through WRITE after the load are found by
    verify(), naming block, region and address; loading again repairs the board."""
    from host.cnn_image import FIELD_BITS, Field
    from host.driver import model_image, pack_words
    from host.driver_errors import VerifyError
    from host.protocol import RegionId

    model = cnn_workload["model"]
    with Accelerator(cnn_board.url, timeout=5.0) as acc:
        acc.load(model, progress=False)
        blocks = model_image(model, acc.identify())
        desc = next(b for b in blocks if b.name.startswith("descriptor of layer 1"))
        address = (1 << FIELD_BITS) | Field.ROW_STRIDE
        wrong = int(desc.words[Field.ROW_STRIDE]) ^ 1
        acc.write(RegionId.DESCRIPTOR, 0, address, pack_words([wrong], desc.word_bytes))
        with pytest.raises(VerifyError, match=r"descriptor of layer 1 .*region DESCRIPTOR.*"
                                              rf"word {address} reads back") as error:
            acc.verify(model)
        assert (error.value.region, error.value.address) == (RegionId.DESCRIPTOR, address)
        entries = next(b for b in blocks if b.name == "entries of PE 3")
        acc.write(RegionId.ENTRY, 3, 7, pack_words([int(entries.words[7]) ^ 0x21],
                                                   entries.word_bytes))
        acc.load(model, progress=False)
        assert acc.verify(model)["verified"] == len(blocks) - 1
        x = cnn_workload["x"][:3]
        assert np.array_equal(acc.infer(x), expected(model, x))


def test_cnn_board_refuses_other_models(cnn_board, board, workload, cnn_workload):
    """An MLP on the CNN board, a CNN on the MLP board and a CNN compressed for another PE
    count are refused before anything is written, each with a message saying what differs."""
    with Accelerator(cnn_board.url, timeout=5.0) as acc, \
            pytest.raises(ModelMismatchError,
                          match=r"has no conv layer \(an MLP\); the bitstream's engine is CNN"
                                r".*SPMV engine"):
        acc.load(workload["model"], progress=False)
    with Accelerator(board.url, timeout=5.0) as acc, \
            pytest.raises(ModelMismatchError, match="layer 0 is conv2d.*CNN engine"):
        acc.load(cnn_workload["model"], progress=False)
    source = cnn_workload["source"]
    other = compress_model(source.model, CompressConfig(n_pe=4, density=0.25),
                           calib_x=source.train[0]).model
    with Accelerator(cnn_board.url, timeout=5.0) as acc, \
            pytest.raises(ModelMismatchError, match="PE count: model 4, engine 8"):
        acc.load(other, progress=False)


def test_cnn_run_cli_sim(cnn_board, cnn_workload, tmp_path):
    """``python -m host.run --sim --model cnn.spn --input X.npy --labels Y.npy --check`` (the
    README's commands; ``--sim`` starts its own board from the fixture's cached build)."""
    x_path, y_path = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x_path, cnn_workload["x"][:120].astype(np.float32))
    np.save(y_path, cnn_workload["y"][:120])
    proc = subprocess.run(
        [sys.executable, "-m", "host.run", "--sim", "--model", str(cnn_workload["path"]),
         "--input", str(x_path), "--labels", str(y_path), "--check", "--json"],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["inferences"] == 120 and report["mismatches"] == 0
    assert report["accuracy"] > 0.9 and report["throughput_per_s"] > 0
