"""Benchmarks of our exports against the field's peers; not part of the installed package.

Each module is a script run from the repository root, `python -m bench.NAME` (`--help` says what
it measures; `--quick`, where offered, is a smoke check on the tiny preset). What they share is
`bench.common`; an ONNX decoder without a bundle (the builder's) runs through `bench.onnx_run`,
ExecuTorch's own `export_llm` through `bench.upstream_executorch`. Results go to `bench/results/`,
and the current figures, with the commands that made them, to `BENCHMARKS.md`.
"""
