"""cocotb tests of the whole shell (UART + CommandDecoder + RegionMemories), bit level.

Run through ``hdl.simulate.run_cocotb`` by tests/hw/test_shell.py, never collected by pytest
directly.  The device is driven through its ``rx`` pin and listened to on its ``tx`` pin at
``DIVISOR`` clocks per bit; responses are parsed with :class:`host.protocol.ResponseParser`.
A Python shadow of every memory region tracks what good WRITEs stored, and READ/CHECKSUM
answers are compared with it (so a rejected frame that changed memory is caught).
"""

from __future__ import annotations

import os
import random
import struct

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, Timer

from host.protocol import (
    FRAME_TIMEOUT_BYTES,
    MAX_PAYLOAD,
    REQUEST_SYNC,
    STATUS_BYTES,
    Command,
    Control,
    RegionId,
    ResponseParser,
    Status,
    crc16,
    engine_config_digest,
    pack_request,
    parse_identity,
    parse_status,
)

DIVISOR = 8
CLOCK_HZ = 12_000_000
BAUD = CLOCK_HZ // DIVISOR
N_PE = 2
TIMEOUT_CYCLES = FRAME_TIMEOUT_BYTES * 10 * DIVISOR
PERIOD_NS = 10


async def cycles(n):
    """Wait ``n`` clock periods with one simulator callback (ClockCycles costs one per cycle)."""
    await Timer(n * PERIOD_NS, unit="ns")


def make_core():
    """The design under test (also used by test_shell.py to generate the Verilog)."""
    from hdl.top import MemoriesBackend, SpineCore, default_test_regions

    return SpineCore(MemoriesBackend(default_test_regions(N_PE)), clock_hz=CLOCK_HZ, baud=BAUD,
                     divisor=DIVISOR)


def regions():
    from hdl.top import default_test_regions

    return {int(r.region): r for r in default_test_regions(N_PE)}


class Device:
    """Bit-level UART host for the DUT, plus a shadow of its memories."""

    def __init__(self, dut):
        self.dut = dut
        self.parser = ResponseParser()
        self.frames = []
        self.raw = bytearray()
        self.regions = regions()
        self.shadow = {(rid, i): [0] * spec.depth
                       for rid, spec in self.regions.items() for i in range(spec.count)}
        self.control = [0] * len(Control)
        self.seq = 0

    def use_identity(self, ident):
        """Take word sizes and depths from an IDENTIFY answer (a design whose region table is
        not :func:`regions`'s); the shadow then holds whole wire words."""
        from hdl.command import RegionSpec

        self.regions = {int(r.region): RegionSpec(int(r.region), 8 * r.word_bytes, r.depth,
                                                  r.count or 256)
                        for r in ident.regions if r.region != RegionId.CONTROL}
        self.shadow = {(rid, i): [0] * spec.depth
                       for rid, spec in self.regions.items() for i in range(spec.count)}

    async def start(self):
        dut = self.dut
        Clock(dut.clk, 10, unit="ns").start()
        dut.rx.value = 1
        dut.rst.value = 1
        await ClockCycles(dut.clk, 4)
        dut.rst.value = 0
        await ClockCycles(dut.clk, 2)
        cocotb.start_soon(self._rx_loop())

    async def _rx_loop(self):
        dut = self.dut
        while True:
            await FallingEdge(dut.tx)
            await Timer(DIVISOR // 2 * PERIOD_NS + 1, unit="ns")   # mid start bit
            if int(dut.tx.value) != 0:
                continue
            byte = 0
            for i in range(8):
                await cycles(DIVISOR)
                byte |= int(dut.tx.value) << i
            await cycles(DIVISOR)
            assert int(dut.tx.value) == 1, "response byte with a low stop bit"
            self.raw.append(byte)
            self.parser.feed(bytes([byte]))
            self.frames.extend(self.parser.frames())

    async def send(self, data: bytes):
        dut = self.dut
        for byte in bytes(data):
            for bit in [0, *((byte >> i) & 1 for i in range(8)), 1]:
                dut.rx.value = bit
                await cycles(DIVISOR)

    async def response(self, max_cycles=None):
        """The next response frame (waits up to ``max_cycles``)."""
        if max_cycles is None:
            max_cycles = (MAX_PAYLOAD + 64) * 10 * DIVISOR + 20_000
        waited = 0
        while not self.frames:
            assert waited < max_cycles, f"no response within {max_cycles} cycles"
            await cycles(200)
            waited += 200
        return self.frames.pop(0)

    def next_seq(self):
        self.seq = (self.seq + 1) & 0xFF
        return self.seq

    async def request(self, command, payload=b"", *, expect=Status.OK, seq=None):
        seq = self.next_seq() if seq is None else seq
        await self.send(pack_request(command, seq, payload))
        frame = await self.response()
        assert frame.seq == seq, f"{Command(command).name}: answer seq {frame.seq} != {seq}"
        assert frame.code == expect, (f"{Command(command).name} {payload[:16].hex()}: status "
                                      f"{frame.code} ({_status_name(frame.code)}), expected "
                                      f"{Status(expect).name}")
        return frame.payload

    async def settle(self):
        """Wait until any frame in progress has timed out and been answered; return and drop
        the answers that arrived meanwhile."""
        await cycles(TIMEOUT_CYCLES + 2 * 10 * 10 * DIVISOR)   # + two short answers
        frames, self.frames = self.frames, []
        return frames

    # --- commands -----------------------------------------------------------------------

    def _word_bytes(self, region):
        if region == RegionId.CONTROL:
            return 4
        return self.regions[region].word_bytes

    async def write(self, region, index, address, values, *, expect=Status.OK):
        wb = self._word_bytes(region)
        data = b"".join((v & ((1 << 8 * wb) - 1)).to_bytes(wb, "little") for v in values)
        await self.request(Command.WRITE, struct.pack("<BBI", region, index, address) + data,
                           expect=expect)
        if expect == Status.OK:
            for k, v in enumerate(values):
                if region == RegionId.CONTROL:
                    self.control[address + k] = v & 0xFFFFFFFF
                else:
                    spec = self.regions[region]
                    self.shadow[(region, index)][address + k] = v & ((1 << spec.width) - 1)

    async def read(self, region, index, address, count, *, expect=Status.OK):
        payload = await self.request(Command.READ, struct.pack("<BBIH", region, index, address,
                                                               count), expect=expect)
        if expect != Status.OK:
            assert payload == b""
            return None
        wb = self._word_bytes(region)
        assert len(payload) == count * wb
        return [int.from_bytes(payload[k * wb:(k + 1) * wb], "little") for k in range(count)]

    async def checksum(self, region, index, address, count, *, expect=Status.OK):
        payload = await self.request(Command.CHECKSUM, struct.pack("<BBIH", region, index,
                                                                   address, count),
                                     expect=expect)
        if expect != Status.OK:
            return None
        assert len(payload) == 2
        return int.from_bytes(payload, "little")

    def expected_words(self, region, index, address, count):
        if region == RegionId.CONTROL:
            return self.control[address:address + count]
        spec = self.regions[region]
        words = self.shadow[(region, index)][address:address + count]
        if spec.signed:
            sign = 1 << (spec.width - 1)
            mask = (1 << 8 * spec.word_bytes) - 1
            words = [((w ^ sign) - sign) & mask for w in words]
        return words

    def expected_crc(self, region, index, address, count):
        wb = self._word_bytes(region)
        data = b"".join(w.to_bytes(wb, "little")
                        for w in self.expected_words(region, index, address, count))
        return crc16(data)

    async def check_all_memories(self):
        """CHECKSUM of every readable region/index equals the shadow's."""
        for rid, spec in self.regions.items():
            if not spec.readable:
                continue
            for index in range(spec.count):
                got = await self.checksum(rid, index, 0, spec.depth)
                want = self.expected_crc(rid, index, 0, spec.depth)
                assert got == want, (f"region {rid} index {index}: CHECKSUM {got:#06x}, "
                                     f"shadow {want:#06x}")


def _status_name(code):
    try:
        return Status(code).name
    except ValueError:
        return "?"


def _random_values(rng, spec, n):
    return [rng.randrange(1 << spec.width) for _ in range(n)]


async def _fill_writable(dev, rng):
    """WRITE random words to the whole of every writable region (every index), in region
    table order.

    Parameters
    ----------
    dev : Device
        The shell under test (its shadow memories track the writes).
    rng : random.Random
        Source of the words (drawn region by region, index by index).
    """
    for rid, spec in dev.regions.items():
        if spec.writable:
            for index in range(spec.count):
                await dev.write(rid, index, 0, _random_values(rng, spec, spec.depth))


# ------------------------------------------------------------------------------------------
# Commands


@cocotb.test()
async def identify(dut):
    dev = Device(dut)
    await dev.start()
    core = make_core()
    payload = await dev.request(Command.IDENTIFY)
    assert payload == core.identity_bytes
    ident = parse_identity(payload)
    assert ident.version == 1 and ident.clock_hz == CLOCK_HZ and ident.baud == BAUD
    assert ident.max_payload == MAX_PAYLOAD
    assert ident.config_hash == engine_config_digest(ident.engine_params())
    table = {r.region: r for r in ident.regions}
    for rid, spec in dev.regions.items():
        desc = table[rid]
        assert (desc.word_bytes, desc.count, desc.depth, desc.readable, desc.writable) == (
            spec.word_bytes, spec.count, spec.depth, spec.readable, spec.writable)
    assert table[RegionId.CONTROL].depth == len(Control)
    # IDENTIFY with a payload is refused.
    await dev.request(Command.IDENTIFY, b"\x00", expect=Status.BAD_LENGTH)


@cocotb.test()
async def write_read_checksum(dut):
    dev = Device(dut)
    await dev.start()
    rng = random.Random(1)
    await _fill_writable(dev, rng)
    # A partial overwrite in the middle, a single word at the very end.
    entry = dev.regions[RegionId.ENTRY]
    await dev.write(RegionId.ENTRY, 1, 5, [1, 2, 3])
    await dev.write(RegionId.ENTRY, 1, entry.depth - 1, [0x77])
    for rid, spec in dev.regions.items():
        if not spec.readable:
            continue
        for index in range(spec.count):
            got = await dev.read(rid, index, 0, spec.depth)
            assert got == dev.expected_words(rid, index, 0, spec.depth), (rid, index)
            got = await dev.read(rid, index, 3, 2)
            assert got == dev.expected_words(rid, index, 3, 2)
            ck = await dev.checksum(rid, index, 0, spec.depth)
            assert ck == dev.expected_crc(rid, index, 0, spec.depth)
    assert await dev.read(RegionId.ENTRY, 0, 0, 0) == []
    assert await dev.checksum(RegionId.ENTRY, 0, 0, 0) == 0xFFFF
    # A maximal WRITE: the whole payload buffer.
    bias = dev.regions[RegionId.BIAS]
    await dev.write(RegionId.BIAS, 0, 0, _random_values(rng, bias, bias.depth))
    assert await dev.read(RegionId.BIAS, 0, 0, bias.depth) == dev.expected_words(
        RegionId.BIAS, 0, 0, bias.depth)
    # CONTROL registers read back.
    await dev.write(RegionId.CONTROL, 0, 0, [0, 5, 6, 0xDEADBEEF])
    assert await dev.read(RegionId.CONTROL, 0, 0, 4) == [0, 5, 6, 0xDEADBEEF]
    # They keep 8 (N_LAYERS), 16 (N_INPUTS, N_OUTPUTS) and 32 (USER) bits, read back
    # zero-extended (docs/protocol.md), by READ and by CHECKSUM, one word or all four.
    await dev.write(RegionId.CONTROL, 0, 0, [0x12345678, 0x9ABCDEF0, 0xFFFFFFFF, 0x0BADF00D])
    kept = [0x78, 0xDEF0, 0xFFFF, 0x0BADF00D]
    assert await dev.read(RegionId.CONTROL, 0, 0, 4) == kept
    assert await dev.read(RegionId.CONTROL, 0, 2, 1) == kept[2:3]
    assert await dev.checksum(RegionId.CONTROL, 0, 0, 4) == crc16(
        b"".join(v.to_bytes(4, "little") for v in kept))
    await dev.write(RegionId.CONTROL, 0, 0, [0, 5, 6, 0xDEADBEEF])
    assert await dev.read(RegionId.CONTROL, 0, 0, 4) == [0, 5, 6, 0xDEADBEEF]
    await dev.check_all_memories()


@cocotb.test()
async def infer_and_status(dut):
    dev = Device(dut)
    await dev.start()
    rng = random.Random(2)
    status = parse_status(await dev.request(Command.STATUS))
    assert status.good_frames == 1 and status.bad_crc == 0 and status.flags == 0
    # Not loaded: N_LAYERS = 0.
    await dev.request(Command.INFER, b"", expect=Status.NOT_LOADED)
    n_in, n_out = 10, 7
    await dev.write(RegionId.CONTROL, 0, 0, [1, n_in, n_out])
    x = [rng.randrange(-2 ** 15, 2 ** 15) for _ in range(n_in)]
    payload = b"".join(struct.pack("<h", v) for v in x)
    await dev.request(Command.INFER, payload[:-2], expect=Status.BAD_LENGTH)
    answer = await dev.request(Command.INFER, payload)
    assert len(answer) == 4 + 2 * n_out
    cycles = struct.unpack_from("<I", answer)[0]
    outputs = list(struct.unpack_from(f"<{n_out}h", answer, 4))
    assert outputs == x[:n_out], (outputs, x)
    depth = min(dev.regions[RegionId.INPUT].depth, dev.regions[RegionId.OUTPUT].depth)
    assert cycles == depth + 1, cycles   # the copy engine: one word per cycle + 1
    out = await dev.read(RegionId.OUTPUT, 0, 0, n_out)
    assert [v - 65536 if v >= 32768 else v for v in out] == x[:n_out]
    status = parse_status(await dev.request(Command.STATUS))
    assert status.infers == 1 and status.last_cycles == cycles
    assert status.flags & 1 and status.flags & 4       # LOADED, ENGINE_DONE
    assert status.rejected == 2 and status.last_error == Status.BAD_LENGTH
    assert status.good_frames == 7
    # Too many outputs for the OUTPUT region.
    await dev.write(RegionId.CONTROL, 0, 2, [dev.regions[RegionId.OUTPUT].depth + 1])
    await dev.request(Command.INFER, payload, expect=Status.BAD_ADDRESS)
    # RESET clears the counters (the engine is idle again).
    await dev.request(Command.RESET)
    status = parse_status(await dev.request(Command.STATUS))
    assert (status.good_frames, status.rejected, status.infers, status.last_error,
            status.flags) == (1, 0, 0, 0, 1)
    await dev.request(Command.RESET, b"x", expect=Status.BAD_LENGTH)
    await dev.request(Command.STATUS, b"x", expect=Status.BAD_LENGTH)


@cocotb.test()
async def error_cases(dut):
    dev = Device(dut)
    await dev.start()
    rng = random.Random(3)
    await _fill_writable(dev, rng)
    entry = dev.regions[RegionId.ENTRY]
    pointer = dev.regions[RegionId.POINTER]

    # Bad CRC: nothing written.
    good = pack_request(Command.WRITE, 0x42, struct.pack("<BBI", RegionId.ENTRY, 0, 0)
                        + bytes(range(8)))
    bad = bytearray(good)
    bad[-1] ^= 0x01
    await dev.send(bytes(bad))
    frame = await dev.response()
    assert (frame.code, frame.seq, frame.payload) == (Status.BAD_CRC, 0x42, b"")
    bad = bytearray(good)
    bad[9] ^= 0x80                        # a payload bit
    await dev.send(bytes(bad))
    assert (await dev.response()).code == Status.BAD_CRC

    # Bad length in the header: answered right after the header, back to hunting.
    await dev.send(bytes([REQUEST_SYNC, Command.WRITE, 0x43]) + struct.pack("<H", MAX_PAYLOAD + 1))
    frame = await dev.response()
    assert (frame.code, frame.seq) == (Status.BAD_LENGTH, 0x43)

    # Unknown command.
    await dev.request(0x7E, b"abc", expect=Status.UNKNOWN_COMMAND)
    await dev.request(0x00, expect=Status.UNKNOWN_COMMAND)

    # Out-of-range accesses: nothing written, nothing read.
    hdr = lambda r, i, a: struct.pack("<BBI", r, i, a)
    await dev.request(Command.WRITE, hdr(9, 0, 0) + b"\x01", expect=Status.BAD_ADDRESS)
    await dev.request(Command.WRITE, hdr(RegionId.ENTRY, N_PE, 0) + b"\x01",
                      expect=Status.BAD_ADDRESS)
    await dev.request(Command.WRITE, hdr(RegionId.ENTRY, 0, entry.depth - 1) + b"\x01\x02",
                      expect=Status.BAD_ADDRESS)
    await dev.request(Command.WRITE, hdr(RegionId.ENTRY, 0, 0xFFFFFFFF) + b"\x01\x02",
                      expect=Status.BAD_ADDRESS)
    await dev.request(Command.WRITE, hdr(RegionId.OUTPUT, 0, 0) + b"\x01\x02",
                      expect=Status.BAD_ADDRESS)                  # read-only region
    await dev.request(Command.WRITE, hdr(RegionId.CONTROL, 0, 3) + bytes(8),
                      expect=Status.BAD_ADDRESS)
    await dev.read(RegionId.INPUT, 0, 0, 1, expect=Status.BAD_ADDRESS)   # write-only region
    await dev.read(RegionId.POINTER, 2, 0, 1, expect=Status.BAD_ADDRESS)
    await dev.read(RegionId.POINTER, 0, pointer.depth - 2, 3, expect=Status.BAD_ADDRESS)
    await dev.read(15, 0, 0, 1, expect=Status.BAD_ADDRESS)
    await dev.checksum(RegionId.POINTER, 0, 1, pointer.depth, expect=Status.BAD_ADDRESS)
    await dev.checksum(RegionId.POINTER, 0, 0xFFFFFFFE, 3, expect=Status.BAD_ADDRESS)

    # Lengths wrong for the command.
    await dev.request(Command.WRITE, hdr(RegionId.POINTER, 0, 0) + b"\x01\x02\x03",
                      expect=Status.BAD_LENGTH)                   # 1.5 words
    await dev.request(Command.WRITE, hdr(RegionId.POINTER, 0, 0), expect=Status.BAD_LENGTH)
    await dev.request(Command.WRITE, b"\x00\x00", expect=Status.BAD_LENGTH)
    await dev.request(Command.READ, struct.pack("<BBI", RegionId.ENTRY, 0, 0),
                      expect=Status.BAD_LENGTH)
    await dev.request(Command.READ, struct.pack("<BBIHB", RegionId.ENTRY, 0, 0, 1, 0),
                      expect=Status.BAD_LENGTH)
    await dev.read(RegionId.BIAS, 0, 0, MAX_PAYLOAD // 4 + 1, expect=Status.BAD_LENGTH)

    # Timeout mid-frame: a truncated WRITE is dropped after FRAME_TIMEOUT_BYTES byte times.
    frame_bytes = pack_request(Command.WRITE, 0x44, hdr(RegionId.ENTRY, 0, 0) + bytes(4))
    await dev.send(frame_bytes[:9])
    start = cocotb.utils.get_sim_time("ns")
    frame = await dev.response(max_cycles=TIMEOUT_CYCLES + 5000)
    waited = (cocotb.utils.get_sim_time("ns") - start) / 10
    assert (frame.code, frame.seq) == (Status.TIMEOUT, 0x44)
    assert TIMEOUT_CYCLES <= waited <= TIMEOUT_CYCLES + 20 * 10 * DIVISOR, waited
    # ... also in the header (seq not yet received: answered with seq 0).
    await dev.send(bytes([REQUEST_SYNC, Command.STATUS]))
    frame = await dev.response(max_cycles=TIMEOUT_CYCLES + 5000)
    assert (frame.code, frame.seq) == (Status.TIMEOUT, 0)

    status = parse_status(await dev.request(Command.STATUS))
    assert status.bad_crc == 2 and status.timeouts == 2
    assert status.rejected == 21, status
    assert dev.frames == []
    await dev.check_all_memories()


# ------------------------------------------------------------------------------------------
# Fuzz


@cocotb.test()
async def fuzz_garbage_truncated_bitflips(dut):
    dev = Device(dut)
    await dev.start()
    seed = int(os.environ.get("SPINE_FUZZ_SEED", "12345"))
    n_frames = int(os.environ.get("SPINE_FUZZ_FRAMES", "240"))
    rng = random.Random(seed)
    writable = [(rid, spec) for rid, spec in dev.regions.items() if spec.writable]
    await _fill_writable(dev, rng)
    await dev.check_all_memories()
    kinds = {"garbage": 0, "truncated": 0, "bitflip": 0, "good": 0}
    for n in range(n_frames):
        rid, spec = rng.choice(writable)
        index = rng.randrange(spec.count)
        count = rng.randrange(1, min(spec.depth, 24) + 1)
        address = rng.randrange(spec.depth - count + 1)
        values = _random_values(rng, spec, count)
        wb = spec.word_bytes
        payload = struct.pack("<BBI", rid, index, address) + b"".join(
            v.to_bytes(wb, "little") for v in values)
        frame = pack_request(Command.WRITE, rng.randrange(256), payload)
        kind = rng.choice(["garbage", "truncated", "bitflip", "good"])
        kinds[kind] += 1
        if kind == "good":
            await dev.write(rid, index, address, values)
            continue
        if kind == "garbage":
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            if rng.random() < 0.5:
                junk = bytes([REQUEST_SYNC]) + junk
        elif kind == "truncated":
            junk = frame[:rng.randrange(1, len(frame))]
        else:
            bad = bytearray(frame)
            for _ in range(rng.choice([1, 1, 2, 3])):
                bad[rng.randrange(len(bad))] ^= 1 << rng.randrange(8)
            junk = bytes(bad)
            if junk == frame:
                continue
        await dev.send(junk)
        answers = await dev.settle()
        for answer in answers:
            assert answer.code != Status.OK, (f"frame {n} ({kind}, {junk.hex()}) was "
                                              f"accepted: {answer}")
        # The device answers the next good frame and memory is unchanged.
        if n % 20 == 0:
            await dev.check_all_memories()
        else:
            got = await dev.checksum(rid, index, 0, spec.depth) if spec.readable else None
            if got is not None:
                assert got == dev.expected_crc(rid, index, 0, spec.depth), (n, kind, junk.hex())
            else:
                await dev.request(Command.STATUS)
    await dev.check_all_memories()
    status = parse_status(await dev.request(Command.STATUS))
    dut._log.info(f"fuzz: {kinds}; device counters {status}")
    assert status.bad_crc + status.timeouts + status.rejected > 0
    assert len(await dev.request(Command.STATUS)) == STATUS_BYTES


# ------------------------------------------------------------------------------------------
# With the engine (tests/hw/test_shell.py::test_shell_with_engine writes the .npz)


def _pack(values, wb):
    return b"".join((int(v) & ((1 << 8 * wb) - 1)).to_bytes(wb, "little") for v in values)


@cocotb.test()
async def engine_load_readback_infer(dut):
    """Load a model image through WRITE frames (the driver's blocks), read every block back
    (READ word by word against the expected read-back, CHECKSUM), check that a corrupted word
    of every region kind is seen by READ and CHECKSUM, then run INFER on several inputs and
    compare with the golden model's outputs and the cycle model's run cycles."""
    import numpy as np

    from hdl.simulate import load_test_data

    data = load_test_data()
    dev = Device(dut)
    await dev.start()
    ident = parse_identity(await dev.request(Command.IDENTIFY))
    assert ident.engine == int(data["engine"]) and ident.n_pe == int(data["n_pe"])
    dev.use_identity(ident)
    table = {r.region: r for r in ident.regions}
    for rid in (RegionId.ENTRY, RegionId.POINTER, RegionId.CODEBOOK, RegionId.BIAS,
                RegionId.DESCRIPTOR, RegionId.OUTPUT, RegionId.CONTROL):
        assert table[rid].readable, f"region {rid} is not readable"
    has_state = "state0" in data
    assert (RegionId.STATE in table) == has_state, sorted(table)
    if has_state:
        st = table[RegionId.STATE]
        assert st.readable and not st.writable and st.count == 1, st
        # read-only: a WRITE is refused, a READ past the depth too
        await dev.request(Command.WRITE, struct.pack("<BBI", RegionId.STATE, 0, 0)
                          + bytes(st.word_bytes), expect=Status.BAD_ADDRESS)
        await dev.request(Command.READ, struct.pack("<BBIH", RegionId.STATE, 0, st.depth, 1),
                          expect=Status.BAD_ADDRESS)
    # Not loaded yet.
    await dev.request(Command.INFER, b"", expect=Status.NOT_LOADED)
    blocks = data["blocks"]       # (n, 5): region, index, address, offset into words, check
    words, readback = data["words"], data["readback"]
    ends = list(blocks[1:, 3]) + [len(words)]
    loaded = []
    for (region, index, address, offset, check), end in zip(blocks, ends):
        region, index, address = int(region), int(index), int(address)
        wb = table[region].word_bytes
        chunk = (MAX_PAYLOAD - 6) // wb
        values = [int(v) for v in words[offset:end]]
        for k in range(0, len(values), chunk):
            payload = struct.pack("<BBI", region, index, address + k) + _pack(
                values[k:k + chunk], wb)
            await dev.request(Command.WRITE, payload)
        if check:
            loaded.append((region, index, address, values,
                           [int(v) for v in readback[offset:end]]))
    kinds = {region for region, *_ in loaded}
    tables = {int(RegionId.TABLE)} if RegionId.TABLE in table else set()   # LSTM engine
    assert kinds == {0, 1, 2, 3, 4, int(RegionId.CONTROL)} | tables, kinds

    def wire(values, wb):
        return [int(v) & ((1 << 8 * wb) - 1) for v in values]

    # Every block reads back: READ (at most MAX_PAYLOAD bytes at a time) and CHECKSUM.
    for region, index, address, _, expect in loaded:
        wb = table[region].word_bytes
        per = MAX_PAYLOAD // wb
        got = []
        for k in range(0, len(expect), per):
            got += await dev.read(region, index, address + k, min(per, len(expect) - k))
        assert got == wire(expect, wb), (region, index, address, got[:8], expect[:8])
        assert await dev.checksum(region, index, address, len(expect)) == crc16(
            _pack(expect, wb))
    dut._log.info(f"read back {len(loaded)} blocks, {sum(len(b[4]) for b in loaded)} words")

    # A corrupted word of every region kind is seen; restoring it restores the CRC.
    for rid in (RegionId.ENTRY, RegionId.POINTER, RegionId.CODEBOOK, RegionId.BIAS,
                RegionId.DESCRIPTOR, *tables):
        region, index, address, values, expect = next(b for b in loaded if b[0] == rid)
        wb = table[region].word_bytes
        k = len(values) // 2
        while region == RegionId.DESCRIPTOR and expect[k] != values[k]:
            k += 1                                  # a stored field (not COLS)
        good_crc = crc16(_pack(expect, wb))
        await dev.write(region, index, address + k, [values[k] ^ 1])
        assert await dev.read(region, index, address + k, 1) == wire([expect[k] ^ 1], wb)
        assert await dev.checksum(region, index, address, len(expect)) != good_crc
        await dev.write(region, index, address + k, [values[k]])
        assert await dev.checksum(region, index, address, len(expect)) == good_crc

    out_wb = table[RegionId.OUTPUT].word_bytes
    in_wb = table[RegionId.INPUT].word_bytes
    for case in range(int(data["n_cases"])):
        payload = _pack(data[f"x{case}"], in_wb)
        answer = await dev.request(Command.INFER, payload)
        cycles = struct.unpack_from("<I", answer)[0]
        outputs = np.array([int.from_bytes(answer[4 + k * out_wb:4 + (k + 1) * out_wb],
                                           "little", signed=True)
                            for k in range((len(answer) - 4) // out_wb)])
        expected = data[f"expected{case}"]
        assert np.array_equal(outputs, expected), (case, outputs, expected)
        assert cycles == int(data[f"cycles{case}"]), (case, cycles, int(data[f"cycles{case}"]))
        dut._log.info(f"case {case}: {len(outputs)} outputs match, {cycles} cycles")
        if f"state{case}" in data:
            # LSTM engine: STATE reads the last layer's final output h_T of this run (READ
            # and CHECKSUM as OUTPUT), bit-exact with the golden model's.
            state = [int(v) for v in data[f"state{case}"]]
            st_wb = table[RegionId.STATE].word_bytes
            got = await dev.read(RegionId.STATE, 0, 0, len(state))
            assert got == wire(state, st_wb), (case, got, state)
            assert await dev.checksum(RegionId.STATE, 0, 0, len(state)) == crc16(
                _pack(state, st_wb))
            k = len(state) - 1
            assert await dev.read(RegionId.STATE, 0, k, 1) == wire(state[k:], st_wb)
            dut._log.info(f"case {case}: h_T ({len(state)} values) matches")
        # Reading back between runs changes nothing (the engine's ports are idle).
        region, index, address, _, expect = loaded[case % len(loaded)]
        assert await dev.checksum(region, index, address, len(expect)) == crc16(
            _pack(expect, table[region].word_bytes))
    status = parse_status(await dev.request(Command.STATUS))
    assert status.infers == int(data["n_cases"])
    last = int(data[f"cycles{int(data['n_cases']) - 1}"])
    assert status.last_cycles == last
    # RESET keeps the model: INFER still works.
    await dev.request(Command.RESET)
    answer = await dev.request(Command.INFER, payload)
    assert struct.unpack_from("<I", answer)[0] == last


@cocotb.test()
async def engine_ident(dut):
    """IDENTIFY of an engine build (named so that no other test's name, a cocotb filter regex,
    matches it): the answer is the core's ROM bytes (``identity`` in the test
    data), parses, its configuration hash matches its fields (extension words included), the
    extension words are the engine's (``extension``), the region table has every engine region
    with the expected access rights, and the driver rebuilds the engine's configuration from it
    (``config``: host.driver.cnn_config for a CNN engine, as JSON)."""
    import json

    import numpy as np

    from hdl.simulate import load_test_data
    from host.driver import EngineInfo, cnn_config
    from host.protocol import EngineKind

    data = load_test_data()
    dev = Device(dut)
    await dev.start()
    payload = await dev.request(Command.IDENTIFY)
    assert payload == bytes(np.asarray(data["identity"], dtype=np.uint8).tolist())
    ident = parse_identity(payload)
    assert ident.engine == int(data["engine"]) and ident.n_pe == int(data["n_pe"])
    assert ident.version == 1 and ident.clock_hz == CLOCK_HZ and ident.baud == BAUD
    assert ident.config_hash == engine_config_digest(ident.engine_params())
    assert list(ident.extension) == [int(v) for v in data["extension"]]
    table = {r.region: r for r in ident.regions}
    assert sorted(table) == list(range(8)), sorted(table)
    for rid in (RegionId.ENTRY, RegionId.POINTER, RegionId.CODEBOOK, RegionId.BIAS,
                RegionId.DESCRIPTOR):
        assert table[rid].readable and table[rid].writable, rid
    assert table[RegionId.INPUT].writable and not table[RegionId.INPUT].readable
    assert table[RegionId.OUTPUT].readable and not table[RegionId.OUTPUT].writable
    if ident.engine == EngineKind.CNN:
        info = EngineInfo.from_payload(payload)
        got = cnn_config(info).to_dict()
        want = json.loads(bytes(np.asarray(data["config"], dtype=np.uint8).tolist()))
        assert got == want, (got, want)
    dut._log.info(f"IDENTIFY: {len(payload)} bytes, extension {list(ident.extension)}")
