"""Speed benchmarks of the bundle against bare PyTorch and a tutorial-style peer (not tests)."""
