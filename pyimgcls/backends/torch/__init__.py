"""torch backend: one module per op family, with the same entry points as every other backend folder
(pyimgcls/backends/__init__.py)."""
