"""Gateway adapter tests."""
