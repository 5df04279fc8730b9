"""Hosting model modules on Ray Serve: the client side and wire format (`client.py`), the
replicas and `visprog serve` (`serve.py`), and evaluation spread over a cluster (`cluster.py`)."""
