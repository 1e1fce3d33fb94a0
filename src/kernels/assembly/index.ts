// Entry point of the WebAssembly kernel module: every kernel family is re-exported here.
export * from "./f32";
export * from "./quant-activations";
export * from "./quant-legacy";
export * from "./quant-layouts";
export * from "./quant-kquants";
export * from "./quant-dequant";
export * from "./quant-search";
export * from "./train";
export * from "./lora";
