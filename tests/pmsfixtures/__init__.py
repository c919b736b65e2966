"""Test-only daemons that master can run (master.cf command ``pmsfixtures.NAME``).

A master.cf command that contains a dot is a full module name; tests put this
directory on PYTHONPATH (master passes PYTHON* variables to its children).
"""
