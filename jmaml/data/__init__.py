"""Task sources: sinusoid regression, Omniglot, miniImageNet, episodic samplers."""
