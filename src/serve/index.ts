// smallhammer/serve: the OpenAI-compatible HTTP server (fastify).
export type { LogFormat, LogLevel, LogOptions } from "./log.js";
export { ApiError } from "./openai.js";
export { type RunningServer, type ServerOptions, startServer } from "./server.js";
