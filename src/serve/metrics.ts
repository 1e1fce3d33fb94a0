/**
 * The server's Prometheus metrics (GET /metrics, text format), through prom-client on a registry
 * of the server's own, so that two servers in one process count apart: requests by route, method
 * and status; prompt and generated tokens; the queue and the busy sequences, read at each scrape;
 * the time to the first token and the time per generated token.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";

export interface SchedulerState {
  busy: number;
  waiting: number;
  slots: number;
}

export class ServerMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<"method" | "route" | "status">;
  readonly promptTokens: Counter;
  readonly completionTokens: Counter;
  readonly timeToFirstToken: Histogram;
  readonly timePerToken: Histogram;

  constructor(state: () => SchedulerState) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: "smallhammer_http_requests_total",
      help: "HTTP requests answered, by method, route (the matched route pattern) and status (499: the client closed the connection first)",
      labelNames: ["method", "route", "status"] as const,
      registers,
    });
    this.promptTokens = new Counter({
      name: "smallhammer_prompt_tokens_total",
      help: "Prompt tokens of finished generations (each prompt once, whatever n) and of embedded inputs",
      registers,
    });
    this.completionTokens = new Counter({
      name: "smallhammer_completion_tokens_total",
      help: "Tokens generated",
      registers,
    });
    new Gauge({
      name: "smallhammer_queue_length",
      help: "Requests waiting for a sequence",
      registers,
      collect() {
        this.set(state().waiting);
      },
    });
    new Gauge({
      name: "smallhammer_slots_busy",
      help: "Sequences in use by generations and embeddings",
      registers,
      collect() {
        this.set(state().busy);
      },
    });
    new Gauge({
      name: "smallhammer_slots_total",
      help: "Sequences the server decodes together (--parallel)",
      registers,
      collect() {
        this.set(state().slots);
      },
    });
    this.timeToFirstToken = new Histogram({
      name: "smallhammer_time_to_first_token_seconds",
      help: "From a generation request's arrival to its first text (queue wait and prompt evaluation included)",
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    this.timePerToken = new Histogram({
      name: "smallhammer_time_per_output_token_seconds",
      help: "Mean time per generated token after the first, one observation per reply",
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}
