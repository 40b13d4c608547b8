"""Amaranth-simulator bench for the engines' read-back port (shared by test files; no tests)."""

from __future__ import annotations

from amaranth.sim import Simulator


def load_and_read_back(engine, n_pe, writes, keys, masks):
    """Load an image through ``engine.load``, then read words back through ``engine.rb``.

    Every PE's loader lane is enabled; each write's data is taken to the loader's
    ``data_width`` bits (two's complement), then the words ``keys`` are read one per cycle.

    Parameters
    ----------
    engine : amaranth.lib.wiring.Component
        An engine with the loader port ``load`` and the read-back port ``rb``.
    n_pe : int
        The engine's PE count (loader lanes).
    writes : dict of numpy.ndarray
        ``region``, ``addr``, ``data`` and ``lanes`` (per PE) of each loader write, as
        ``image_writes`` gives them.
    keys : iterable of (int, int, int)
        The ``(region, pe, addr)`` words to read back, in order.
    masks : dict
        Region -> mask of the bits a read of that region defines.

    Returns
    -------
    dict
        ``(region, pe, addr)`` -> the word read, masked with its region's mask.
    """
    got = {}
    data_mask = (1 << engine.data_width) - 1

    async def bench(ctx):
        load, rb = engine.load, engine.rb
        ctx.set(load.mask, (1 << n_pe) - 1)
        for i in range(len(writes["region"])):
            ctx.set(load.region, int(writes["region"][i]))
            ctx.set(load.addr, int(writes["addr"][i]))
            ctx.set(load.data, int(writes["data"][i]) & data_mask)
            for p in range(n_pe):
                ctx.set(load.lanes[p], int(writes["lanes"][i][p]))
            ctx.set(load.valid, 1)
            await ctx.tick()
        ctx.set(load.valid, 0)
        await ctx.tick()
        for key in keys:
            region, pe, addr = key
            ctx.set(rb.en, 1)
            ctx.set(rb.region, region)
            ctx.set(rb.pe, pe)
            ctx.set(rb.addr, addr)
            await ctx.tick()
            ctx.set(rb.en, 0)
            got[key] = ctx.get(rb.data) & masks[region]

    sim = Simulator(engine)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got
