"""Offline side of galaxypaint: catalogs to train on, training, export.  Imports ``app``, never the reverse."""
