// Entry point of the WebAssembly kernel module: every kernel family is re-exported here.
export * from "./f32";
export * from "./quant";
export * from "./train";
