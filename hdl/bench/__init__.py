"""Benchmarks of spine's engines on the RTL (``python -m hdl.bench SUBCOMMAND``)."""
