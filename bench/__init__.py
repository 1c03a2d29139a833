"""Benchmarks: bin/bench-imaging and bin/bench-pipeline (not part of the installed package)."""
