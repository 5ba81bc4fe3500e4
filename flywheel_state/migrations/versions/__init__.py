"""The migration scripts shipped with flywheel-state, one per revision (``NNNN_slug.py``)."""
