"""Evaluation on data sets: readers for GQA, NLVR2 and JSONL (`datasets.py`), answer
normalisation (`answers.py`) and the harness behind `visprog eval` (`harness.py`)."""
