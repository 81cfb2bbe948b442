"""The shared core: inner loop, meta-objectives, the one vmap over tasks, the train step."""
