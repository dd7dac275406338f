"""The domain: orders, payments, refunds, their streams and the one write path.

It imports only ``channels`` and ``gateways`` (an import-linter contract says so); the web
layer (``server``) and the worker (``reconciler``) call into it and translate its errors.
"""
