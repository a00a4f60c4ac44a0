"""Benchmarks that back performance claims with figures (see loadtest/README.md)."""
