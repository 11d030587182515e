"""Encoders, heads and the series model."""
