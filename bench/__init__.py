"""Benchmarks: ``python -m bench [name ...]`` runs ``bench/<name>.py:main(out_dir)`` for each.

Each writes ``bench/results/<name>.txt`` that starts with the command that produced it.
"""
