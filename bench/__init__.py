"""Benchmarks of incus-host-tables: `python -m bench` (see docs/performance.md).

Every figure is measured with its reference (ip -batch, the kernel floor,
one process per route) in the same run, inside throwaway network namespaces.
"""
