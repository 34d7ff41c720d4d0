"""The self-guided pipeline, its platform settings and the `selfguided` command line."""
