import { createInterface, type Interface } from "node:readline";
import type { Command } from "commander";
import { AbortError, UserError } from "../errors.js";
import type { ConstraintOptions } from "../model/grammar/index.js";
import { type ChatMessage, loadModel, type Model } from "../model/model.js";
import { ChatTemplateBudgetError } from "../model/templates.js";
import { addConstraintOptions, type ConstraintFlags, constraintOptions } from "./grammar-options.js";
import {
  addModelOptions,
  addSamplingOptions,
  intArg,
  type ModelFlags,
  modelOptions,
  type SamplingFlags,
  samplerOptions,
} from "./options.js";

interface ChatFlags extends SamplingFlags, ModelFlags, ConstraintFlags {
  system?: string;
  nPredict: number;
}

const HELP =
  "commands: /reset (new conversation), /system TEXT (set the system prompt), /exit; Ctrl-C stops a reply";

/**
 * Drops the oldest user/assistant turns until the rendered conversation leaves `reserve` tokens of
 * room in the context; the system message is kept.
 */
export function fitHistory(model: Model, messages: ChatMessage[], reserve: number): ChatMessage[] {
  const out = [...messages];
  const budget = model.contextSize - reserve;
  for (;;) {
    const n = model.chatPromptTokens(out).length;
    if (n <= budget) return out;
    const first = out.findIndex((m) => m.role !== "system");
    // Keep at least the newest user message.
    if (first < 0 || first >= out.length - 1) {
      throw new UserError(
        `the message is ${n} tokens; the context of ${model.contextSize} tokens has no room for it`,
      );
    }
    out.splice(first, out[first + 1]?.role === "assistant" ? 2 : 1);
  }
}

export function registerChat(program: Command) {
  const cmd = program
    .command("chat")
    .description("talk with a model in the terminal (multi-turn, streamed)")
    .option("-s, --system <text>", "system prompt")
    .option("-n, --n-predict <n>", "most tokens per reply", intArg("-n", 1), 512);
  addModelOptions(cmd);
  addSamplingOptions(cmd);
  addConstraintOptions(cmd);
  cmd.action(async (flags: ChatFlags) => {
    const constraint = constraintOptions(flags); // a bad grammar fails before the model loads
    const model = await loadModel(flags.model, modelOptions(flags));
    model.template(); // fail now, not at the first message, when there is no template
    await runChat(model, { ...flags, constraint });
  });
}

/**
 * Lines of input one at a time, from a terminal or a pipe. readline emits piped lines as fast as
 * they arrive, also while a reply streams, and closes at the end of input; lines are queued so
 * that none is lost and the ones read before the end are still answered.
 */
class LineQueue {
  private readonly lines: string[] = [];
  private waiting: ((line: string | undefined) => void) | undefined;
  private ended = false;

  constructor(private readonly rl: Interface) {
    rl.on("line", (line) => {
      const w = this.waiting;
      this.waiting = undefined;
      if (w) w(line);
      else this.lines.push(line);
    });
    rl.on("close", () => {
      this.ended = true;
      const w = this.waiting;
      this.waiting = undefined;
      w?.(undefined);
    });
  }

  /** Shows `prompt` and resolves with the next line, or undefined once the input has ended. */
  next(prompt: string): Promise<string | undefined> {
    const queued = this.lines.shift();
    if (queued !== undefined) {
      process.stdout.write(prompt);
      return Promise.resolve(queued);
    }
    if (this.ended) return Promise.resolve(undefined);
    this.rl.setPrompt(prompt);
    this.rl.prompt();
    return new Promise((resolve) => {
      this.waiting = resolve;
    });
  }
}

/** The chat REPL on a loaded model (also opened by the quickstart on its result). */
export async function runChat(
  model: Model,
  flags: Pick<ChatFlags, "system" | "nPredict"> & SamplingFlags & { constraint?: ConstraintOptions },
) {
  const rl = createInterface({ input: process.stdin, output: process.stdout, terminal: process.stdin.isTTY });
  const input = new LineQueue(rl);
  let system = flags.system;
  let history: ChatMessage[] = [];
  let current: AbortController | undefined;
  // Ctrl-C stops the reply being streamed; with no reply, it ends the chat. On a terminal readline
  // reads Ctrl-C as a key and emits SIGINT on the interface; otherwise (input from a pipe, or a
  // signal sent with kill) the process receives the signal itself.
  const interrupt = () => {
    if (current) current.abort();
    else rl.close();
  };
  rl.on("SIGINT", interrupt);
  process.on("SIGINT", interrupt);
  const out = process.stdout;
  out.write(`${model.name} · context ${model.contextSize} · template ${model.template().label}\n${HELP}\n`);
  try {
    for (;;) {
      const line = await input.next("> ");
      if (line === undefined) break;
      const text = line.trim();
      if (!text) continue;
      if (text === "/exit" || text === "/quit") break;
      if (text === "/reset") {
        history = [];
        model.reset();
        out.write("(new conversation)\n");
        continue;
      }
      if (text.startsWith("/system")) {
        system = text.slice("/system".length).trim() || undefined;
        history = [];
        out.write(
          system ? "(system prompt set; new conversation)\n" : "(system prompt cleared; new conversation)\n",
        );
        continue;
      }
      if (text.startsWith("/")) {
        out.write(`unknown command ${text.split(/\s/)[0]}; ${HELP}\n`);
        continue;
      }
      history.push({ role: "user", content: text });
      const base: ChatMessage[] = system ? [{ role: "system", content: system }] : [];
      let messages: ChatMessage[];
      try {
        messages = fitHistory(model, [...base, ...history], Math.min(flags.nPredict, model.contextSize >> 1));
      } catch (e) {
        history.pop();
        // A template past its rendering budget fails every conversation: that ends the chat.
        if (e instanceof UserError && !(e instanceof ChatTemplateBudgetError)) {
          out.write(`${e.message}\n`);
          continue;
        }
        throw e;
      }
      history = messages.filter((m) => m.role !== "system");
      current = new AbortController();
      let reply = "";
      try {
        for await (const piece of model.chat(messages, {
          ...samplerOptions(flags),
          ...flags.constraint,
          maxTokens: flags.nPredict,
          signal: current.signal,
        })) {
          reply += piece;
          out.write(piece);
        }
      } catch (e) {
        if (!(e instanceof AbortError)) throw e; // Ctrl-C: the reply so far stays
      }
      const stopped = current.signal.aborted;
      current = undefined;
      out.write(stopped ? " [stopped]\n" : "\n");
      history.push({ role: "assistant", content: reply.trim() });
    }
  } finally {
    process.off("SIGINT", interrupt);
    rl.close();
    await model.dispose();
  }
}
