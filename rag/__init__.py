"""Baokan: grounded, cited question answering over the People's Daily archive."""

__version__ = "0.1.0"
