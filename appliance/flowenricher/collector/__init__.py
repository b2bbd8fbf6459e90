"""Receiving: UDP sockets and the worker processes that decode what arrives."""
