"""Command-line entry points (``convert_weights.py``, ``sample.py``, ``train.py`` wrap these)."""
