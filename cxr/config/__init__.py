"""The run's parameters and the table of model architectures they default from."""
