"""Other implementations of the neural memory behind our memory's call contract, for side-by-side runs.

`benchmarks.peers.titans_pytorch`: lucidrains' titans-pytorch 0.5.5 `NeuralMemory` (`pip install -e ".[bench]"`).
"""
