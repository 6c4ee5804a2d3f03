"""pythonbuild's builder: builds the wheels upstream lacks for supported projects."""
