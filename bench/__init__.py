"""Benchmarks: aiayn against what its users would pick instead, on the same machine, in one run.

    python -m bench.train    # training throughput: aiayn's training step vs torch.nn.Transformer
    python -m bench.decode   # decoding: aiayn's Translator vs Hugging Face Marian and CTranslate2
    python -m bench.load     # aiayn serve under concurrent clients, malformed requests mixed in

Each prints one JSON line per measurement to stdout and a summary table to stderr. Every
figure that compares two implementations is a ratio of two measurements taken in the same
process, so machine noise and CPU model cancel as far as they can. docs/performance.md
explains the figures, the FLOP formula and where the time goes.
"""
