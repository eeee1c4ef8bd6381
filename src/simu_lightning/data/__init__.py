"""Benchmarks (synthetic, TOFU, LUME), prompt formatting with answer-only labels, and the DataModule."""
