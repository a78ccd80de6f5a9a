"""Aurora's shared library (pack01_common)."""
