"""Latency measurement of exported Relax libraries, in-process or on remote devices through TVM's RPC
tracker (`runner`), and a throwaway local tracker + servers for tests and single-host runs (`rpc_local`)."""

from .runner import LocalRunner, MeasureError, RPCRunner, Timing, TimingConfig, parse_rpc

__all__ = ["LocalRunner", "MeasureError", "RPCRunner", "Timing", "TimingConfig", "parse_rpc"]
