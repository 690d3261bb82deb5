"""Evaluation of the embedded benchmark: sampling, the digits feature extractor and torch-fidelity metrics."""
