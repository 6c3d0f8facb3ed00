"""Repository-level pytest setup: pytester for the plugin tests. The dbsnap plugin itself loads through its
pytest11 entry point, exactly as it does for users."""

pytest_plugins = ["pytester"]
