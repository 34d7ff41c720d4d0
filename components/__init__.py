"""Plain, tested logic of every pipeline step; each step module ends in a thin KFP wrapper."""
