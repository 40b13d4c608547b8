"""Host driver (host/driver.py, host/transport.py) against the in-process fake board.

The fake (tests/fake_board.py, a test fixture) implements host/protocol.py in Python; these
tests cover the driver's framing, retries, pipelining and model checks.  They do not replace
the end-to-end test against the real RTL (tests/hw/test_end_to_end.py).
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from fake_board import FakeBoard, make_identity

from host.spmv_image import random_layer
from host.activations import TableSpec
from host.compressed import CompressedModel, QLinear, QReLU
from host.driver import (Accelerator, EngineInfo, model_image, model_mismatches, pack_words,
                         unpack_words)
from host.driver_errors import DeviceError, LinkError, ModelMismatchError, VerifyError
from host.errors import SpineError
from host.fixedpoint import Format
from host.golden import GoldenModel
from host.protocol import Command, RegionId, Status
from host.transport import open_link

ACT = Format(16, 10)


def small_mlp(n_pe=2, sizes=(16, 24, 8), seed=1, act=ACT) -> CompressedModel:
    rng = np.random.default_rng(seed)
    layers = []
    for n, (cols, rows) in enumerate(itertools.pairwise(sizes)):
        matrix = random_layer(rng, rows, cols, 0.4, n_pe, weight_format=Format(16, 12),
                              bias_scale=0.5)
        layers.append(QLinear(matrix, relu=False))
        if n < len(sizes) - 2:
            layers.append(QReLU())
    return CompressedModel("small-mlp", (sizes[0],), layers, n_pe, act, 32, TableSpec())


def inputs(model, count, seed=2):
    return np.random.default_rng(seed).uniform(-2, 2, (count, *model.input_shape))


def golden(model, x):
    g = GoldenModel(model)
    return g.forward_int(g.quantize_input(x))


@pytest.fixture
def model():
    return small_mlp()


@pytest.fixture
def board(model):
    return FakeBoard(make_identity(2), model)


def connect(board, timeout=0.1, retries=3):
    return Accelerator(transport=board, timeout=timeout, retries=retries)


# --- words and identity -------------------------------------------------------------------------


def test_words_round_trip():
    values = np.array([0, 1, -1, 32767, -32768, 1234, -4321])
    for wb in (2, 4):
        assert np.array_equal(unpack_words(pack_words(values, wb), wb), values)
    assert pack_words([-1, 2], 2) == b"\xff\xff\x02\x00"
    assert np.array_equal(unpack_words(b"\xff\x0f", 2, True, 12), [-1])


def test_identify(board):
    with connect(board) as acc:
        info = acc.identify()
        assert isinstance(info, EngineInfo)
        assert (info.n_pe, info.act_format, info.kind, info.hash_ok) == (2, ACT, "SPMV", True)
        assert info.word_bytes(RegionId.BIAS) == 4
        assert "2 PEs" in info.describe()
        status = acc.status()
        assert status.infers == 0


# --- load, verify, infer ------------------------------------------------------------------------


def test_load_and_infer_match_golden(board, model):
    x = inputs(model, 5)
    with connect(board) as acc:
        acc.load(model, progress=False)
        assert acc.last_load["verify"]["verified"] > 0
        assert np.array_equal(acc.infer(x[0]), golden(model, x[:1])[0])
        assert np.array_equal(acc.infer(x), golden(model, x))
        assert acc.last_cycles is not None
        assert acc.status().infers == 6


def test_load_from_package(tmp_path, board, model):
    from host.package import save_package
    path = tmp_path / "m.spn"
    save_package(model, path)
    with connect(board) as acc:
        loaded = acc.load(path, progress=False)
        assert loaded.name == model.name


def test_image_writes_control_last(board, model):
    blocks = model_image(model, EngineInfo.from_payload(
        __import__("host.protocol").protocol.pack_identity(board.identity)))
    assert blocks[0].region == RegionId.CONTROL and blocks[0].words.tolist() == [0]
    assert blocks[-1].region == RegionId.CONTROL
    assert blocks[-1].words[:3].tolist() == [2, 16, 8]


def test_verify_detects_corrupted_memory(board, model):
    with connect(board) as acc:
        acc.load(model, progress=False)
        report = acc.last_load["verify"]
        assert report["rewritten"] == [] and report["skipped"] == []
        assert report["verified"] == len(model_image(model, acc.identify())) - 1
        board.memory[(RegionId.BIAS, 0)][3] ^= 1
        with pytest.raises(VerifyError, match=r"biases \(region BIAS\).*word 3 reads back "
                                              r"0x[0-9A-F]{8}, expected") as error:
            acc.verify(model)
        assert (error.value.region, error.value.address) == (RegionId.BIAS, 3)
        assert error.value.got ^ error.value.expected == 1


def test_verify_after_a_wrong_write(board, model):
    """A word overwritten through WRITE after the load is found, with its region, PE and
    address."""
    with connect(board) as acc:
        acc.load(model, progress=False)
        blocks = model_image(model, acc.identify())
        entries = next(b for b in blocks if b.name == "entries of PE 1")
        wrong = int(entries.words[5]) ^ 0x21
        acc.write(RegionId.ENTRY, 1, 5, bytes([wrong]))
        with pytest.raises(VerifyError, match=r"entries of PE 1 \(region ENTRY, PE 1\) does "
                                              r"not hold what was written: word 5 reads back "
                                              rf"0x{wrong:02X}, expected "
                                              rf"0x{int(entries.words[5]):02X} \(1 of "):
            acc.verify(model)


def test_load_rewrites_a_block_once(board, model):
    """A glitch during the load: the block is written again and then verifies."""
    board.bad_bits_once[(RegionId.POINTER, 0, 4)] = 0x4
    x = inputs(model, 3)
    with connect(board) as acc:
        acc.load(model, progress=False)
        assert acc.last_load["verify"]["rewritten"] == ["pointers of PE 0"]
        assert np.array_equal(acc.infer(x), golden(model, x))


def test_load_fails_on_a_broken_memory_word(board, model):
    """A word that never takes its value: the load stops with the block, region, PE and
    address, and the model is not attached."""
    board.bad_bits[(RegionId.ENTRY, 1, 7)] = 0x80
    with connect(board) as acc:
        with pytest.raises(VerifyError, match=r"entries of PE 1 \(region ENTRY, PE 1\) does "
                                              r"not hold what was written after writing it a "
                                              r"second time: word 7") as error:
            acc.load(model, progress=False)
        assert (error.value.region, error.value.index, error.value.address) == (
            RegionId.ENTRY, 1, 7)
        assert error.value.got ^ error.value.expected == 0x80
        assert acc.model is None


def test_descriptor_cols_is_not_stored(board, model):
    """The engines do not keep a layer's COLS field: it reads 0 and the driver expects that."""
    from host.memory_map import Field
    with connect(board) as acc:
        acc.load(model, progress=False)
        word = acc.read(RegionId.DESCRIPTOR, 0, Field.COLS, 1)
        assert word == bytes(4)
        assert board.memory[(RegionId.DESCRIPTOR, 0)][Field.COLS] == 16


def test_attach_preloaded(board, model):
    with connect(board) as acc:
        acc.load(model, progress=False)
    board.closed = False
    with connect(board) as acc:
        acc.attach(model)
        x = inputs(model, 3)
        assert np.array_equal(acc.infer(x), golden(model, x))


def test_infer_before_load(board, model):
    with connect(board) as acc, pytest.raises(SpineError, match="load"):
        acc.infer(inputs(model, 1)[0])


def test_not_loaded_status_is_an_error(model):
    board = FakeBoard(make_identity(2), model)
    with connect(board) as acc:
        acc._attach(model)  # the driver thinks it is loaded; the device says no
        acc._info = acc.identify()
        with pytest.raises(DeviceError, match="NOT_LOADED.*load a model"):
            acc.infer(inputs(model, 1)[0])


def test_wrong_input_shape(board, model):
    with connect(board) as acc:
        acc.load(model, progress=False)
        with pytest.raises(SpineError, match="shape"):
            acc.infer(np.zeros((3, 5)))


# --- model checks -------------------------------------------------------------------------------


def test_mismatch_pe_count_and_format(model):
    board = FakeBoard(make_identity(4, act_frac=8), model)
    with connect(board) as acc, pytest.raises(ModelMismatchError) as error:
        acc.load(model, progress=False)
    text = str(error.value)
    assert "PE count: model 2, engine 4" in text
    assert "activation format" in text and "--pes 4" in text
    assert board.commands.count(Command.WRITE) == 0  # refused before writing anything


def test_mismatch_size_and_widths():
    model = small_mlp(sizes=(16, 80, 8))
    board = FakeBoard(make_identity(2, run_bits=3, max_rows=64), model)
    with connect(board) as acc, pytest.raises(ModelMismatchError) as error:
        acc.check_model(model)
    text = str(error.value)
    assert "layer 0 size: model 80 x 16, engine at most 64 x 64" in text
    assert "layer 0 run bits: model 4, engine 3" in text


def test_mismatch_layer_kind(board):
    from host.compressed import QLSTM
    model = small_mlp()
    lstm = QLSTM(random_layer(np.random.default_rng(0), 16, 8, 0.5, 2), 4, 4)
    model.layers = [lstm]
    with connect(board) as acc, pytest.raises(ModelMismatchError, match="layer 0 is lstm"):
        acc.check_model(model)


def test_product_shift_in_identify_and_mismatch(model):
    """The engine's product shift travels as an IDENTIFY extension word covered by the
    configuration hash (an answer without it means 0); a model with another shift is refused
    naming both values and the fixes; a matching one loads and runs bit-exactly."""
    from dataclasses import replace

    from host.driver import EngineInfo
    from host.protocol import pack_identity
    plain = make_identity(2)
    assert plain.extension == () and plain.product_shift == 0
    shifted = make_identity(2, product_shift=12)
    assert shifted.extension == (12,) and shifted.product_shift == 12
    info = EngineInfo.from_payload(pack_identity(shifted))
    assert info.product_shift == 12 and info.hash_ok
    assert info.config_hash != plain.config_hash
    assert "product shift 12" in info.describe()
    forged = EngineInfo.from_payload(pack_identity(replace(shifted, extension=())))
    assert forged.product_shift == 0 and not forged.hash_ok
    # A CNN engine's shift follows its 9 own words; an older 9-word answer means 0.
    from host.protocol import CNN_EXTENSION_KEYS, EngineKind, engine_extension
    cnn = {"engine": int(EngineKind.CNN), **{k: 1 for k in CNN_EXTENSION_KEYS}}
    assert engine_extension(cnn) == (1,) * 9
    assert engine_extension(dict(cnn, product_shift=3)) == (1,) * 9 + (3,)
    old = replace(plain, engine=int(EngineKind.CNN), extension=(1,) * 9)
    assert old.product_shift == 0 and "product_shift" not in old.engine_params()
    assert replace(old, extension=(1,) * 9 + (3,)).product_shift == 3
    with connect(FakeBoard(shifted, model)) as acc, pytest.raises(ModelMismatchError) as error:
        acc.check_model(model)
    text = str(error.value)
    assert "product shift: model 0, engine 12 — " in text
    assert "rebuild the bitstream for the model" in text and "--product-shift 12" in text
    shifted_model = replace(model, product_shift=5)
    with connect(FakeBoard(make_identity(2), shifted_model)) as acc, \
            pytest.raises(ModelMismatchError, match="product shift: model 5, engine 0"):
        acc.check_model(shifted_model)
    board = FakeBoard(make_identity(2, product_shift=5), shifted_model)
    x = inputs(shifted_model, 6)
    with connect(board) as acc:
        acc.load(shifted_model, progress=False)
        got = np.stack([acc.infer(v) for v in x])
    assert np.array_equal(got, golden(shifted_model, x))
    assert not np.array_equal(got, golden(model, x))
    descriptors = board.memory[(RegionId.DESCRIPTOR, 0)]
    assert descriptors[6] == 12 - 5          # Field.SHIFT = weight.frac - product shift


def test_mismatch_bad_config_hash(model):
    from dataclasses import replace
    identity = replace(make_identity(2), config_hash=b"\0" * 8)
    with connect(FakeBoard(identity, model)) as acc, \
            pytest.raises(ModelMismatchError, match="configuration hash"):
        acc.check_model(model)


# --- link errors and retries --------------------------------------------------------------------


def test_retry_on_device_bad_crc(board, model):
    with connect(board) as acc:
        acc.load(model, progress=False)
        board.corrupt_requests.add(board.requests)          # the next request arrives damaged
        x = inputs(model, 1)
        assert np.array_equal(acc.infer(x), golden(model, x))
        assert acc.link.stats.device_bad_crc == 1 and acc.link.stats.retries == 1


def test_corrupted_answer_is_never_returned(board, model):
    with connect(board) as acc:
        acc.load(model, progress=False)
        board.corrupt_answers.add(board.requests)
        x = inputs(model, 1)
        assert np.array_equal(acc.infer(x), golden(model, x))
        assert acc.link.stats.bad_crc == 1 and acc.link.stats.retries == 1


def test_lost_answer_times_out_and_retries(board, model):
    with connect(board, timeout=0.05) as acc:
        acc.load(model, progress=False)
        board.drop_answers.add(board.requests)
        x = inputs(model, 1)
        assert np.array_equal(acc.infer(x), golden(model, x))
        assert acc.link.stats.stalls == 1


def test_garbage_before_answer(board, model):
    with connect(board) as acc:
        acc.load(model, progress=False)
        board.garbage = b"\x00\xff\x5a\x01noise\x5a"
        x = inputs(model, 2)
        assert np.array_equal(acc.infer(x), golden(model, x))
        assert acc.link.stats.skipped_bytes > 0


def test_duplicate_answer_is_dropped(board, model):
    with connect(board) as acc:
        acc.load(model, progress=False)
        board.duplicate_answers.add(board.requests)
        x = inputs(model, 4)
        got = list(acc.stream(x, window=1))
        assert len(got) == 4 and np.array_equal(np.stack(got), golden(model, x))
        assert acc.link.stats.stale == 1


def test_silent_device_raises_link_error(board):
    board.silent = True
    with connect(board, timeout=0.05, retries=2) as acc:
        start = time.monotonic()
        with pytest.raises(LinkError, match=r"IDENTIFY request #0 .* failed 3 times"):
            acc.identify()
        assert time.monotonic() - start < 2


def test_device_error_status(board):
    with connect(board) as acc:
        with pytest.raises(DeviceError, match="BAD_ADDRESS") as error:
            acc.write(RegionId.BIAS, 0, 10**6, b"\0\0\0\0")
        assert error.value.status == Status.BAD_ADDRESS


def test_closed_link(board):
    acc = connect(board)
    acc.close()
    with pytest.raises(LinkError, match="closed"):
        acc.identify()


def test_open_missing_port():
    with pytest.raises(LinkError, match=r"/dev/ttyNOPE.*serial.tools.list_ports"):
        open_link("/dev/ttyNOPE", baud=115200, timeout=0.1)


def test_open_refused_socket():
    from hdl.sim import free_port
    with pytest.raises(LinkError, match="hdl.sim"):
        Accelerator(f"socket://127.0.0.1:{free_port()}")


# --- pipelining ---------------------------------------------------------------------------------


def test_stream_keeps_window_in_flight_and_order(board, model):
    x = inputs(model, 40)
    with connect(board) as acc:
        acc.load(model, progress=False)
        board.max_unread_answers = 0
        got = list(acc.stream(x, window=4))
    assert np.array_equal(np.stack(got), golden(model, x))
    assert board.max_unread_answers == 4


def test_stream_with_random_faults_loses_and_duplicates_nothing(model):
    board = FakeBoard(make_identity(2), model, rng=np.random.default_rng(7))
    x = inputs(model, 200, seed=5)
    with connect(board, timeout=0.03, retries=6) as acc:
        acc.load(model, progress=False)
        board.fail_random = 0.1
        got = list(acc.stream_int(acc.quantize(x), window=5, cycles=True))
        stats = acc.link.stats
    outputs = np.stack([o for o, _ in got])
    assert np.array_equal(outputs, golden(model, x))
    assert stats.retries > 5
    # every INFER the device executed beyond the 200 is a retry whose answer was dropped or stale
    assert board.infers >= 200


def test_small_device_fifo_falls_back_to_one_in_flight(board, model):
    x = inputs(model, 30)
    with connect(board) as acc:
        acc.load(model, progress=False, window=1)
        board.small_fifo = True
        got = list(acc.stream(x, window=4))
        assert np.array_equal(np.stack(got), golden(model, x))
        assert acc.link.stats.window_drops == 1 and acc.link.window_limit == 1
        retries = acc.link.stats.retries
        board.max_unread_answers = 0
        assert len(list(acc.stream(x, window=4))) == 30
        assert acc.link.stats.retries == retries and board.max_unread_answers == 1


def test_persistent_bad_length_is_a_device_error(board):
    with connect(board, retries=2) as acc:
        with pytest.raises(DeviceError, match="BAD_LENGTH 3 times") as error:
            acc.write(RegionId.BIAS, 0, 0, b"\0\0\0")        # 3 bytes: not a 4-byte word
        assert error.value.status == Status.BAD_LENGTH


def test_second_stream_while_one_is_open(board, model):
    x = inputs(model, 4)
    with connect(board) as acc:
        acc.load(model, progress=False)
        first = acc.stream(x, window=2)
        next(first)
        with pytest.raises(RuntimeError, match="still open"):
            next(acc.stream(x))
        first.close()
        assert len(list(acc.stream(x))) == 4


# --- host.run input handling (no board needed) ----------------------------------------------------


def test_run_cli_input_errors(tmp_path, model, capsys):
    from host.package import save_package
    from host.run import load_inputs, load_labels, main
    spn = tmp_path / "m.spn"
    save_package(model, spn)
    with pytest.raises(SpineError, match="does not exist"):
        load_inputs(tmp_path / "nope.npy", (16,))
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    with pytest.raises(SpineError, match="not a readable .npy"):
        load_inputs(bad, (16,))
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 5), np.float32))
    with pytest.raises(SpineError, match=r"shape \(3, 5\); the model takes \(batch, 16\)"):
        load_inputs(wrong, (16,))
    one = tmp_path / "one.npy"
    np.save(one, np.zeros(16, np.float32))
    assert load_inputs(one, (16,)).shape == (1, 16)
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(2, np.int64))
    with pytest.raises(SpineError, match=r"one per input"):
        load_labels(labels, 3)
    assert main(["--port", "loop://", "--model", str(spn), "--input", str(wrong)]) == 2
    assert "shape (3, 5)" in capsys.readouterr().err


def test_run_cli_reports_json_against_fake(monkeypatch, tmp_path, model, capsys):
    import json

    import host.driver
    from host.package import save_package
    from host.run import main
    spn, x_path = tmp_path / "m.spn", tmp_path / "x.npy"
    save_package(model, spn)
    x = inputs(model, 20).astype(np.float32)
    np.save(x_path, x)
    argv = ["--port", "fake://", "--model", str(spn), "--input", str(x_path), "--check",
            "--json", "--output", str(tmp_path / "o.npy")]
    # The fake board's cycle counts are made up (100, 101, ...): --check finds every one of
    # them off the cycle model and exits 1, though every output is right.
    board = FakeBoard(make_identity(2), model)
    monkeypatch.setattr(host.driver, "open_link", lambda url, **kw: board)
    assert main(argv) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["inferences"] == 20 and report["mismatches"] == 0
    assert report["cycle_mismatches"] == 20
    assert report["throughput_per_s"] > 0
    assert np.array_equal(np.load(tmp_path / "o.npy"), golden(model, x.astype(np.float64)))

    class CycleExact(FakeBoard):
        """Answers INFER with the SpMV cycle model's count (broadcast FIFO depth 8, the
        default, which this fake's IDENTIFY leaves out)."""

        def _execute(self, command, payload):
            import struct

            from host.protocol import pack_identity
            from host.spmv_image import build_image, expected_run
            status, data = super()._execute(command, payload)
            if command == Command.INFER and status == Status.OK:
                info = EngineInfo.from_payload(pack_identity(self.identity))
                params = host.driver._spmv_params(info)
                assert params.fifo_depth == 8
                q = np.frombuffer(payload, dtype="<i2").astype(np.int64)
                layers = host.driver._engine_layers(self.model)
                run = expected_run(params, build_image(params, layers), q)
                data = struct.pack("<I", run.cycles) + data[4:]
            return status, data

    board = CycleExact(make_identity(2), model)
    monkeypatch.setattr(host.driver, "open_link", lambda url, **kw: board)
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mismatches"] == 0 and report["cycle_mismatches"] == 0


def test_endless_garbage_is_a_link_error(board):
    class Noisy(FakeBoard):
        def read(self, n):
            return b"\x5a\x00\x01\xff\x03" * 4     # headers that never complete a frame

    with connect(Noisy(make_identity(2)), timeout=0.05, retries=1) as acc, \
            pytest.raises(LinkError, match="failed 2 times"):
        acc.identify()


def test_write_only_regions_are_skipped(model):
    """A bitstream without read-back (regions 0-4 write-only in IDENTIFY): the load checks what
    it can (CONTROL) and lists the rest as skipped."""
    import dataclasses

    identity = make_identity(2)
    regions = tuple(dataclasses.replace(r, readable=False) if r.region <= RegionId.DESCRIPTOR
                    else r for r in identity.regions)
    board = FakeBoard(dataclasses.replace(identity, regions=regions), model)
    with connect(board) as acc:
        acc.load(model, progress=False)
        report = acc.last_load["verify"]
    assert report["verified"] == 1                        # the final CONTROL words
    assert "entries of PE 0" in report["skipped"] and "biases" in report["skipped"]
    assert Command.CHECKSUM in board.commands


# --- the LSTM state (region STATE) --------------------------------------------------------------
# The positive path (h_T read back bit-exact) runs on the real RTL: tests/hw/test_end_to_end.py
# (test_lstm_state_bit_exact) and tests/hw/test_shell.py (the LSTM shell case).


def test_state_needs_a_model(board):
    with connect(board) as acc, pytest.raises(SpineError, match="no model .* load"):
        acc.read_state()


def test_state_refused_without_state_region(board, model):
    """An SpMV board has no STATE region: read_state() and infer(state=True) say so (engine
    kind, how to fix) and infer(state=True) sends no INFER first."""
    x = inputs(model, 2)
    with connect(board) as acc:
        acc.load(model, progress=False)
        assert np.array_equal(acc.infer(x), golden(model, x))
        infers = board.infers
        for call in (acc.read_state, lambda: acc.infer(x, state=True),
                     lambda: acc.infer_int(acc.quantize(x)[0], state=True)):
            with pytest.raises(SpineError, match=r"no STATE region \(engine SPMV\).*"
                                                 r"rebuild the bitstream"):
                call()
        assert board.infers == infers


def test_run_cli_state_refused_on_spmv(monkeypatch, tmp_path, model, capsys):
    import host.driver
    from host.package import save_package
    from host.run import main
    spn, x_path = tmp_path / "m.spn", tmp_path / "x.npy"
    save_package(model, spn)
    np.save(x_path, inputs(model, 3).astype(np.float32))
    board = FakeBoard(make_identity(2), model)
    monkeypatch.setattr(host.driver, "open_link", lambda url, **kw: board)
    assert main(["--port", "fake://", "--model", str(spn), "--input", str(x_path),
                 "--state", str(tmp_path / "h.npy")]) == 2
    assert "no STATE region" in capsys.readouterr().err
    assert not (tmp_path / "h.npy").exists() and board.infers == 0


def test_identify_pe_group_extension():
    """`pe_group` is the common extension word after `product_shift`: an answer without it
    (older bitstreams) means 1 and hashes the header only; with pe_group 2 and no product
    shift the words are (0, 2) and the hash covers pe_group but not the default 0."""
    from dataclasses import replace

    from host.protocol import (engine_config_digest, engine_extension, pack_identity,
                               parse_identity)
    old = make_identity(4)
    assert old.extension == () and old.pe_group == 1 and old.product_shift == 0
    assert EngineInfo.from_payload(pack_identity(old)).hash_ok
    params = {**old.engine_params(), "pe_group": 2}
    assert engine_extension(params) == (0, 2)
    assert engine_extension({**params, "product_shift": 5}) == (5, 2)
    assert engine_extension({**params, "pe_group": 1}) == ()
    new = replace(old, extension=(0, 2), config_hash=engine_config_digest(params))
    info = EngineInfo.from_payload(pack_identity(new))
    assert info.pe_group == 2 and info.product_shift == 0 and info.hash_ok
    assert info.engine_params() == params
    # The word is covered by the hash: the same answer claiming pe_group 1 does not match.
    assert not EngineInfo.from_payload(pack_identity(replace(new, extension=(0, 1)))).hash_ok
    assert parse_identity(pack_identity(new)).pe_group == 2


def test_identify_late_words_fifo_depth_and_lstm_schedule():
    """The broadcast FIFO depth (SpMV, LSTM) and the LSTM schedule (ew_lanes, overlap) follow
    the common words, left out at their defaults (8, 1, 1) like them: a default engine answers
    and hashes as before; a non-default value is sent, covered by the hash, and reaches the
    driver's engine parameters (what its cycle model uses)."""
    from dataclasses import replace

    from host.driver import _lstm_schedule, _spmv_params
    from host.protocol import EngineKind, engine_config_digest, engine_extension, pack_identity
    old = make_identity(4)
    assert old.extension == () and old.late_params() == {"fifo_depth": 8}
    assert _spmv_params(EngineInfo.from_payload(pack_identity(old))).fifo_depth == 8
    params = {**old.engine_params(), "fifo_depth": 4}
    assert engine_extension(params) == (0, 1, 4)              # product_shift, pe_group, fifo
    new = replace(old, extension=(0, 1, 4), config_hash=engine_config_digest(params))
    info = EngineInfo.from_payload(pack_identity(new))
    assert info.hash_ok and info.engine_params() == params
    assert _spmv_params(info).fifo_depth == 4
    assert not EngineInfo.from_payload(pack_identity(replace(new, extension=(0, 1, 2)))).hash_ok
    # LSTM: fifo_depth, ew_lanes, overlap; the board's serial unit with a 1-deep FIFO.
    lstm = {**params, "engine": int(EngineKind.LSTM), "fifo_depth": 1, "overlap": 0}
    assert engine_extension(lstm) == (0, 1, 1, 1, 0)
    assert engine_extension({**lstm, "overlap": 1}) == (0, 1, 1)   # trailing defaults dropped
    ident = replace(new, engine=int(EngineKind.LSTM), extension=(0, 1, 1, 1, 0),
                    config_hash=engine_config_digest(lstm))
    info = EngineInfo.from_payload(pack_identity(ident))
    assert info.hash_ok and info.late_params() == {"fifo_depth": 1, "ew_lanes": 1,
                                                   "overlap": 0}
    assert _lstm_schedule(info.late_params()) == {"fifo_depth": 1, "ew_lanes": 1,
                                                  "overlap": False}


# --- the LSTM engine's activation tables (region TABLE) -----------------------------------------
# The positive path (tables loaded, read back, a corrupted word found by verify) runs on the real
# RTL: tests/hw/test_end_to_end.py (test_verify_finds_a_corrupted_table_word), test_shell.py.


def _lstm_board_info():
    from dataclasses import replace

    from fake_board import backend_info

    from hdl.build import engine_for_model, make_backend
    from host.lstm_image import random_lstm
    from host.protocol import RegionDescription

    lstm, cls = random_lstm(np.random.default_rng(4), 4, 6, 0.5, 2, classes=3)
    model = CompressedModel("tiny-lstm", (5, 4), [lstm, cls], 2, ACT, 32, TableSpec())
    info = backend_info(make_backend(engine_for_model(model)))
    # the shell's CONTROL region (the backend lists only the engine's)
    info = replace(info, regions=info.regions + (RegionDescription(RegionId.CONTROL, 4, 1, 4),))
    old = replace(info, regions=tuple(r for r in info.regions if r.region != RegionId.TABLE))
    return model, info, old


def test_lstm_image_loads_the_tables():
    """The LSTM image writes the TABLE region: sigmoid, tanh, tanh (cell table) of the model's
    table_spec, as host.activations.make_table (the golden model's tables)."""
    from host.memory_map import table_layout

    model, info, _ = _lstm_board_info()
    assert model_mismatches(model, info) == []
    table = info.region(RegionId.TABLE)
    layout = table_layout(model.table_spec)
    assert (table.depth, table.word_bytes, table.readable, table.writable) == (
        layout["words"], 2, True, True)
    blocks = [b for b in model_image(model, info) if b.region == RegionId.TABLE]
    assert len(blocks) == 1 and blocks[0].check and blocks[0].address == 0
    words, golden_model = blocks[0].words, GoldenModel(model)
    e = model.table_spec.entries
    assert np.array_equal(words[:e], golden_model._sigmoid)
    assert np.array_equal(words[layout["tanh"]:layout["tanh"] + e], golden_model._tanh)
    assert np.array_equal(words[layout["cell"]:], golden_model._tanh)


def test_lstm_board_without_table_region_says_rebuild():
    """A bitstream built before the tables were loadable has no TABLE region: the model check
    and the image say so and how to fix it (rebuild); a table of another size is refused."""
    model, info, old = _lstm_board_info()
    problems = model_mismatches(model, old)
    assert len(problems) == 1 and "no TABLE region" in problems[0]
    assert "rebuild the bitstream" in problems[0]
    with pytest.raises(ValueError, match="no TABLE region .*rebuild the bitstream"):
        model_image(model, old)
    bigger = CompressedModel(model.name, model.input_shape, model.layers, model.n_pe, ACT, 32,
                             TableSpec(index_bits=10))
    assert any("activation tables: model 3072 words (table_spec index_bits 10" in p
               and "TABLE region 1536" in p for p in model_mismatches(bigger, info))
