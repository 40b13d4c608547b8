"""spine gateware: Amaranth generators of the sparse engines, board shells and build flow."""
