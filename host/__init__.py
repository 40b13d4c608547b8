"""spine host side: compression pipeline, package files, bit-exact golden model, driver."""
