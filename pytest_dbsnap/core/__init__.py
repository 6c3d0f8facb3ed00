"""Standard-library helpers every layer may use: redaction, running programs, progress, the reaper, atomic files.

Nothing here imports another part of pytest_dbsnap but `errors`.
"""
