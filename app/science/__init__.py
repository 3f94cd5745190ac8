"""The science: power spectra, clustering comparisons, figures.  Pure functions on arrays."""
