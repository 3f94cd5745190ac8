"""Painting engines: a halo catalog file in, the same catalog with galaxy properties out."""
