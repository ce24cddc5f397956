"""Integer compute definitions (TVM TE) for the quantized operators."""
