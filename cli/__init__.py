"""Entry points on top of every layer: the `cxr` command line."""
