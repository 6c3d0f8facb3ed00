"""The smoke checks the plugin brings: built-in phase checks and [[tool.dbsnap.checks]], as pytest items.

spec.py (no pytest) is what the settings read; items.py makes the pytest items of a smoke run.
"""
