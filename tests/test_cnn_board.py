"""The CNN engine as a board engine, without a simulator: IDENTIFY extension words, engine
selection and capacity check (hdl.build), the driver's configuration, checks and image."""

from __future__ import annotations

import numpy as np
import pytest

from hdl.build import CapacityError, check_capacity, engine_for_model, main, make_backend
from hdl.top import CnnBackend, SpineCore
from host.driver import EngineInfo, cnn_config, cnn_input_order, model_image, model_mismatches
from host.protocol import (
    CNN_EXTENSION_KEYS,
    EngineKind,
    Identity,
    ProtocolError,
    RegionDescription,
    engine_config_digest,
    pack_identity,
    parse_identity,
)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """digits-cnn compressed for 8 PEs (as ``python -m host.compress digits-cnn --pes 8``)."""
    from host.modelsource import resolve_model
    from host.package import save_package
    from host.pipeline import CompressConfig, compress_model

    source = resolve_model("digits-cnn")
    density = source.defaults.get("density", 0.25)
    model = compress_model(source.model, CompressConfig(n_pe=8, density=density),
                           calib_x=source.train[0]).model
    path = tmp_path_factory.mktemp("cnn-board") / "digits-cnn.spn"
    save_package(model, path)
    return {"model": model, "path": path, "source": source}


def _identity(**changes):
    fields = dict(version=1, engine=3, clock_hz=25_000_000, baud=115200,
                  config_hash=bytes(8), n_pe=8, index_bits=4, run_bits=4, act_width=16,
                  act_frac=10, weight_width=16, acc_bits=32, max_layers=3, max_rows=64,
                  max_cols=511, max_entries_per_pe=512, max_pointers=512, max_bias=128,
                  max_payload=1024, regions=(RegionDescription(0, 1, 8, 512),),
                  extension=(8, 64, 8, 1, 1, 2, 8, 0, 0))
    fields.update(changes)
    return Identity(**fields)


def test_identify_extension_round_trip():
    ident = _identity()
    payload = pack_identity(ident)
    assert payload[7] == len(CNN_EXTENSION_KEYS)
    assert parse_identity(payload) == ident
    assert ident.extension_params() == dict(zip(CNN_EXTENSION_KEYS, ident.extension))
    params = ident.engine_params()
    assert params["fm_words"] == 64 and params["max_pool"] == 2
    # Without extension words the byte is 0 (the layout of earlier answers).
    plain = _identity(engine=1, extension=())
    assert pack_identity(plain)[7] == 0 and parse_identity(pack_identity(plain)) == plain
    assert "fm_words" not in plain.engine_params()
    with pytest.raises(ProtocolError, match="for 1 regions and 9 extension words"):
        parse_identity(payload[:-4])
    # The CNN engine's 9 words alone mean pe_group 1; the common words product_shift (0) and
    # pe_group (2) after them give PE pairs.
    from host.driver import cnn_config
    assert ident.pe_group == 1
    assert cnn_config(EngineInfo.from_payload(pack_identity(ident))).pe_group == 1
    pairs = _identity(extension=(8, 64, 8, 1, 1, 2, 8, 0, 0, 0, 2))
    config = cnn_config(EngineInfo.from_payload(pack_identity(pairs)))
    assert (config.pe_group, config.product_shift) == (2, 0)


def test_engine_selection_and_identify(cnn):
    params = engine_for_model(cnn["model"])
    assert params["engine"] == "cnn" and params["uniform_fields"]
    backend = make_backend(params)
    assert isinstance(backend, CnnBackend)
    core = SpineCore(backend, clock_hz=25_000_000, baud=115200)
    info = EngineInfo.from_payload(core.identity_bytes)
    assert info.engine == EngineKind.CNN and info.kind == "CNN" and info.hash_ok
    assert info.config_hash == engine_config_digest(backend.params)
    assert cnn_config(info) == backend.engine.cfg
    assert model_mismatches(cnn["model"], info) == []
    blocks = model_image(cnn["model"], info)
    control = blocks[-1].words
    assert list(control[:3]) == [3, 64, 10]          # 3 hardware layers, 1x8x8 in, 10 out


def test_driver_refuses_other_configurations(cnn):
    from host.pipeline import CompressConfig, compress_model

    info = EngineInfo.from_payload(SpineCore(make_backend(engine_for_model(cnn["model"])),
                                             clock_hz=25_000_000, baud=115200).identity_bytes)
    source = cnn["source"]
    other = compress_model(source.model, CompressConfig(n_pe=4, density=0.25, bits=3),
                           calib_x=source.train[0]).model
    problems = model_mismatches(other, info)
    assert "PE count: model 4, engine 8" in problems
    assert any("index bits: model 3, engine 4" in p for p in problems), problems
    mlp = resolve_mlp()
    problems = model_mismatches(mlp, info)
    assert len(problems) == 1 and "has no conv layer (an MLP)" in problems[0]
    assert "SPMV engine" in problems[0]


def resolve_mlp():
    from host.modelsource import resolve_model
    from host.pipeline import CompressConfig, compress_model

    source = resolve_model("digits-mlp")
    return compress_model(source.model, CompressConfig(n_pe=8, density=0.2),
                          calib_x=source.train[0]).model


def test_input_order_is_hwc():
    x = np.arange(3 * 2 * 4).reshape(3, 2, 4)
    order = cnn_input_order(x, (3, 2, 4))
    assert list(order[:4]) == [x[0, 0, 0], x[1, 0, 0], x[2, 0, 0], x[0, 0, 1]]
    assert np.array_equal(cnn_input_order(np.arange(5), (5,)), np.arange(5))


def test_capacity_ulx3s_fits_icebreaker_refused(cnn, capsys):
    from boards import get_board

    params = engine_for_model(cnn["model"])
    assert check_capacity(get_board("ulx3s"), params)["bram_blocks"] > 0
    with pytest.raises(CapacityError, match=r"(?s)does not fit the icebreaker \(CNN engine.*"
                                            r"block RAM overflows"
                                            r".*too many.*feature-map buffers"):
        check_capacity(get_board("icebreaker"), params, model_name="digits-cnn")
    assert main(["--board", "ulx3s", "--model", str(cnn["path"]), "--check-only"]) == 0
    assert main(["--board", "icebreaker", "--model", str(cnn["path"]), "--check-only"]) == 1
    assert "feature-map buffers" in capsys.readouterr().err


def test_driver_refuses_a_cnn_too_large_for_the_engine(cnn):
    """A bitstream with a smaller engine (entry memory, feature-map buffers): build_image's
    message names the layer and the memory."""
    from hdl.cnn import CnnEngine
    from host.cnn_image import CnnConfig

    entries = ("layer 2 (conv 16->64 3x3): the entry memory needs 293 entries per PE up to "
               "this layer, the engine holds `max_entries_per_pe` = 256")
    buffer = ("layer 0 (conv 1->16 3x3): the input feature map 1x8x8 needs 64 words of 8 "
              "activations, the feature-map buffer holds `fm_words` = 32")
    for change, message in (({"max_entries_per_pe": 256}, entries), ({"fm_words": 32}, buffer)):
        config = CnnConfig.for_model(cnn["model"], **change)
        core = SpineCore(CnnBackend(CnnEngine(config)), clock_hz=25_000_000, baud=115200)
        problems = model_mismatches(cnn["model"], EngineInfo.from_payload(core.identity_bytes))
        assert len(problems) == 1 and message in problems[0], problems
