"""The injector: compose file in, meshed compose file out (see injector.py)."""
