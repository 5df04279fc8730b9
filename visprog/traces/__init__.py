"""Traces: what a run did, step by step (`step.py`, `records.py`), as JSON (`json_io.py`) and
as one HTML page (`html.py`, drawing in `draw.py`)."""
