"""The Locust load test of the platform: devices posting readings, dashboards following them over SSE.

The locustfile and the modules it imports use Locust and the standard library only, so they run in the
stock Locust image (kubernetes/). ``run.py``, the local runner, also uses the platform's supervisor helpers.
"""
