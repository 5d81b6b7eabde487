"""Benchmarks of the interceptor product against its brief's targets.

Run as root: ``python -m bench [--quick] [--only NAME ...]``. Everything runs
inside network namespaces the bench makes (tests/e2e harness) and is removed
at the end, also when a benchmark fails. See bench/README.md.
"""
