"""dlcore's benchmark suite: one module per suite, each with ``run(device, quick) -> rows``."""
