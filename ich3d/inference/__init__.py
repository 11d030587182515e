"""Inference: batched prediction, the predict/merge API, submissions."""
