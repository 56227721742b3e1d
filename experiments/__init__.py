"""Experiments: compositions of the layers (training, benchmarks, memory) that write results/.

Nothing in titans/, benchmarks/ or data_gen/ imports them.
"""
