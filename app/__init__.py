"""galaxypaint: learn, serve and paint the halo-galaxy connection (de Santi et al. 2022)."""

__version__ = "0.1.0"
