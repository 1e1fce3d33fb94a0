// f32 kernels: matrix products with float weights, norms, rope, attention, activations.
