"""Configuration: the option table, the value parsers, the frozen Settings and how they are loaded, the
placeholders and the checks' spec. Standard library only; nothing here knows servers or dumps.
"""
