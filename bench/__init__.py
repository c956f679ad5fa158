"""Benchmark of the gateway against its own apps served alone, peer compositions and
the bare frameworks: ``python bench/run.py`` (see ``bench/README.md``)."""
