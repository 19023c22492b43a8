"""The production side: promoted adapters put to use. Serving many adapters on one base (serving/), merged exports
for transformers and llama.cpp (export/), and fusions of several adapters into one (fusion.py). Adapters come from
the registry or a directory (sources.py), always checked against the base they were trained on."""
