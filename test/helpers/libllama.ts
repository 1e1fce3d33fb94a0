// llama.cpp's own quantizers for the tests: the one binding the quantize bench uses.
export { ggmlQuantize, type LlamaQuantizeOptions, llamaModelQuantize } from "../../src/bench/libllama.js";
