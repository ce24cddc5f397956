"""Relax passes of tvm_mpq, one per module."""
