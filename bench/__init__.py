"""Benchmarks: `make bench` (`python -m bench`). Starts its own PostgreSQL database and server
processes, drives them from a separate load-generator process, and reports every figure beside
its baseline measured in the same run (SPEC §6). See README.md, "Benchmarks".
"""
