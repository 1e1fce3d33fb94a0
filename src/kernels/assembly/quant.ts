// Quantized kernels: activation quantizers, block-format matrix products, dequantizers.
