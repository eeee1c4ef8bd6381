"""Model loading, the architecture registry, the tiny laptop model and target preparation."""
