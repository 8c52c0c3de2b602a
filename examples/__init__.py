"""Examples of sqla_signed_urls: ``quickstart.py`` (a short tour) and ``campus_forum``."""
