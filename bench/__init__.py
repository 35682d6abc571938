"""Benchmarks of alterego on the embedded defaults: every figure is printed next to a
baseline measured in the same run (raw llama-cpp-python, raw sentence-transformers, a
plain peft loop, a model reload, a bare Gradio app...). Each suite module (`chat`,
`personas`, `ingest`, `retrieval`, `recall`, `training`, `models`, `voice`, `idle`,
`responsiveness`) exposes `run(home, quick, progress)` and runs alone as
`python -m bench.<suite>`; `bench.runner` (the `alterego bench` command) runs them all
in one process, sharing one loaded model and embedder, and writes
`$ALTEREGO_HOME/bench/report.json` and `report.png`."""
