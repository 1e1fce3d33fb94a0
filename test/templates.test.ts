import { Template } from "@huggingface/jinja";
import { describe, expect, it } from "vitest";
import { UserError } from "../src/errors.js";
import {
  builtinTemplateSource,
  type ChatMessage,
  chooseTemplate,
  parseTemplateName,
  renderChat,
  stopStringsFor,
  templateNames,
} from "../src/model/templates.js";

const BOS = "<s>";
const EOS = "</s>";

const withSystem: ChatMessage[] = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Hi there" },
  { role: "assistant", content: "Hello." },
  { role: "user", content: "Name a colour." },
];
const noSystem = withSystem.slice(1);

const ALPACA_PREAMBLE =
  "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
const ALPACA_PREAMBLE_INPUT =
  "Below is an instruction that describes a task, paired with an input that provides further context. " +
  "Write a response that appropriately completes the request.";
const VICUNA_SYSTEM =
  "A chat between a curious user and an artificial intelligence assistant. " +
  "The assistant gives helpful, detailed, and polite answers to the user's questions.";

function render(
  name: ReturnType<typeof templateNames>[number],
  messages: ChatMessage[],
  addGenerationPrompt = true,
) {
  return renderChat(messages, { name, bosToken: BOS, eosToken: EOS, addGenerationPrompt });
}

function expectUserError(f: () => unknown, ...parts: string[]): void {
  let caught: unknown;
  try {
    f();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(UserError);
  const message = (caught as UserError).message;
  expect(message).not.toContain("\n");
  for (const p of parts) expect(message).toContain(p);
}

describe("built-in templates", () => {
  it("alpaca: single turn is Alpaca's prompt, output and EOS", () => {
    expect(render("alpaca", [{ role: "user", content: "Say hi." }])).toBe(
      `${ALPACA_PREAMBLE}\n\n### Instruction:\nSay hi.\n\n### Response:\n`,
    );
    expect(
      render(
        "alpaca",
        [
          { role: "user", content: "Translate.", input: "Bonjour" },
          { role: "assistant", content: "Hello" },
        ],
        false,
      ),
    ).toBe(
      `${ALPACA_PREAMBLE_INPUT}\n\n### Instruction:\nTranslate.\n\n### Input:\nBonjour\n\n### Response:\nHello</s>`,
    );
  });

  it("alpaca: system replaces the preamble; turns are blocks separated by blank lines", () => {
    expect(render("alpaca", withSystem)).toBe(
      "You are terse.\n\n" +
        "### Instruction:\nHi there\n\n### Response:\nHello.</s>\n\n" +
        "### Instruction:\nName a colour.\n\n### Response:\n",
    );
    expect(render("alpaca", noSystem, false)).toBe(
      `${ALPACA_PREAMBLE}\n\n` +
        "### Instruction:\nHi there\n\n### Response:\nHello.</s>\n\n" +
        "### Instruction:\nName a colour.\n\n",
    );
  });

  it("alpaca: the first user message decides the preamble; later inputs render under ### Input:", () => {
    const later: ChatMessage[] = [
      { role: "user", content: "A" },
      { role: "assistant", content: "B" },
      { role: "user", content: "C", input: "D" },
    ];
    expect(render("alpaca", later)).toBe(
      `${ALPACA_PREAMBLE}\n\n### Instruction:\nA\n\n### Response:\nB</s>\n\n` +
        "### Instruction:\nC\n\n### Input:\nD\n\n### Response:\n",
    );
    expect(render("alpaca", [{ role: "system", content: "" }, ...later])).toBe(
      "### Instruction:\nA\n\n### Response:\nB</s>\n\n### Instruction:\nC\n\n### Input:\nD\n\n### Response:\n",
    );
  });

  it("vicuna_v1.1: FastChat's layout, default system when none is given", () => {
    expect(render("vicuna_v1.1", withSystem)).toBe(
      "You are terse. USER: Hi there ASSISTANT: Hello.</s>USER: Name a colour. ASSISTANT:",
    );
    expect(render("vicuna_v1.1", noSystem)).toBe(
      `${VICUNA_SYSTEM} USER: Hi there ASSISTANT: Hello.</s>USER: Name a colour. ASSISTANT:`,
    );
    expect(render("vicuna_v1.1", withSystem.slice(0, 3), false)).toBe(
      "You are terse. USER: Hi there ASSISTANT: Hello.</s>",
    );
    expect(render("vicuna_v1.1", [{ role: "system", content: "" }, ...noSystem])).toBe(
      "USER: Hi there ASSISTANT: Hello.</s>USER: Name a colour. ASSISTANT:",
    );
  });

  it("llama-2: Meta's [INST] <<SYS>> layout, BOS per turn, stripped contents", () => {
    expect(render("llama-2", withSystem)).toBe(
      "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi there [/INST] Hello. </s><s>[INST] Name a colour. [/INST]",
    );
    expect(render("llama-2", noSystem)).toBe(
      "<s>[INST] Hi there [/INST] Hello. </s><s>[INST] Name a colour. [/INST]",
    );
    expect(
      render(
        "llama-2",
        [
          { role: "user", content: "  padded  " },
          { role: "assistant", content: "\nanswer\n" },
        ],
        false,
      ),
    ).toBe("<s>[INST] padded [/INST] answer </s>");
  });

  it("llama-2: roles must alternate", () => {
    expectUserError(
      () =>
        render("llama-2", [
          { role: "user", content: "a" },
          { role: "user", content: "b" },
        ]),
      '"llama-2"',
      "alternate",
    );
  });

  it("chatml: im_start/im_end blocks and the assistant opening", () => {
    expect(render("chatml", withSystem)).toBe(
      "<|im_start|>system\nYou are terse.<|im_end|>\n" +
        "<|im_start|>user\nHi there<|im_end|>\n" +
        "<|im_start|>assistant\nHello.<|im_end|>\n" +
        "<|im_start|>user\nName a colour.<|im_end|>\n" +
        "<|im_start|>assistant\n",
    );
    expect(render("chatml", noSystem.slice(0, 2), false)).toBe(
      "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n",
    );
  });

  it("folds an input into the content for templates other than alpaca", () => {
    expect(render("chatml", [{ role: "user", content: "Translate.", input: "Bonjour" }])).toBe(
      "<|im_start|>user\nTranslate.\n\nBonjour<|im_end|>\n<|im_start|>assistant\n",
    );
  });

  it("rejects a system message after the first", () => {
    for (const name of templateNames()) {
      expectUserError(() => render(name, [...noSystem, { role: "system", content: "late" }]), `"${name}"`);
    }
  });

  it("the built-in sources are plain Jinja: rendered directly they give the same text", () => {
    for (const name of templateNames()) {
      const direct = new Template(builtinTemplateSource(name)).render({
        messages: withSystem,
        bos_token: BOS,
        eos_token: EOS,
        add_generation_prompt: true,
      });
      expect(direct).toBe(render(name, withSystem));
    }
  });
});

describe("names, stop strings and choice", () => {
  it("lists and parses names", () => {
    expect(templateNames()).toEqual(["alpaca", "vicuna_v1.1", "llama-2", "chatml"]);
    expect(parseTemplateName("chatml")).toBe("chatml");
    expect(parseTemplateName(" Llama-2 ")).toBe("llama-2");
    expectUserError(() => parseTemplateName("vicuna"), '"vicuna"', "alpaca, vicuna_v1.1, llama-2, chatml");
  });

  it("gives stop strings per format", () => {
    expect(stopStringsFor("alpaca")).toContain("### Instruction:");
    expect(stopStringsFor("vicuna_v1.1")).toContain("USER:");
    expect(stopStringsFor("chatml")).toContain("<|im_end|>");
    expect(stopStringsFor("llama-2")).toContain("[INST]");
  });

  it("an explicit name wins, then the file's template, else a hint to use --template", () => {
    const file = "{% for m in messages %}{{ m['content'] }}{% endfor %}";
    const named = chooseTemplate(file, "chatml");
    expect(named.name).toBe("chatml");
    expect(named.template).toBeUndefined();
    expect(named.source).toBe(builtinTemplateSource("chatml"));
    expect(named.stopStrings).toContain("<|im_end|>");

    const fromFile = chooseTemplate(file, undefined);
    expect(fromFile.name).toBeUndefined();
    expect(fromFile.template).toBe(file);
    expect(renderChat(noSystem, { ...fromFile, bosToken: BOS, eosToken: EOS })).toBe(
      "Hi thereHello.Name a colour.",
    );
    expect(chooseTemplate(file, "").template).toBe(file);

    expectUserError(() => chooseTemplate(undefined, undefined), "--template");
    expectUserError(() => chooseTemplate("  ", undefined), "--template");
    expectUserError(() => chooseTemplate(file, "nope"), '"nope"');
  });

  it("a file that stores the alpaca source renders inputs as the built-in does", () => {
    const messages: ChatMessage[] = [{ role: "user", content: "Translate.", input: "Bonjour" }];
    const fromFile = chooseTemplate(builtinTemplateSource("alpaca"));
    expect(renderChat(messages, { ...fromFile, bosToken: BOS, eosToken: EOS })).toBe(
      render("alpaca", messages),
    );
  });

  it("finds ChatML end markers in a file's template", () => {
    expect(chooseTemplate(builtinTemplateSource("chatml")).stopStrings).toEqual(["<|im_end|>"]);
  });
});

describe("real-world templates from model files", () => {
  // TinyLlama-1.1B-Chat-v1.0 / HuggingFaceH4/zephyr-7b-beta tokenizer_config.json chat_template.
  const ZEPHYR =
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n" +
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n" +
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n" +
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

  // meta-llama/Llama-2-7b-chat-hf tokenizer_config.json chat_template (without its default system prompt).
  const LLAMA2_HF =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}" +
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}" +
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
    "{% if loop.index0 == 0 and system_message != false %}" +
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}" +
    "{% else %}{% set content = message['content'] %}{% endif %}" +
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}" +
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

  const pirate: ChatMessage[] = [
    { role: "system", content: "You are a friendly chatbot who always responds in the style of a pirate" },
    { role: "user", content: "Hello, how are you?" },
    { role: "assistant", content: "I'm doing great. How can I help you today?" },
    { role: "user", content: "I'd like to show off how chat templating works!" },
  ];

  it("renders the Zephyr/TinyLlama template", () => {
    const body =
      "<|system|>\nYou are a friendly chatbot who always responds in the style of a pirate</s>\n" +
      "<|user|>\nHello, how are you?</s>\n" +
      "<|assistant|>\nI'm doing great. How can I help you today?</s>\n" +
      "<|user|>\nI'd like to show off how chat templating works!</s>\n";
    const chosen = chooseTemplate(ZEPHYR);
    expect(renderChat(pirate, { ...chosen, bosToken: BOS, eosToken: EOS, addGenerationPrompt: false })).toBe(
      body,
    );
    expect(renderChat(pirate, { ...chosen, bosToken: BOS, eosToken: EOS })).toBe(`${body}<|assistant|>\n`);
  });

  it("renders the Llama-2 HF template exactly as the llama-2 built-in", () => {
    const expected =
      "<s>[INST] <<SYS>>\nYou are a friendly chatbot who always responds in the style of a pirate\n<</SYS>>\n\n" +
      "Hello, how are you? [/INST] I'm doing great. How can I help you today? </s>" +
      "<s>[INST] I'd like to show off how chat templating works! [/INST]";
    expect(renderChat(pirate, { template: LLAMA2_HF, bosToken: BOS, eosToken: EOS })).toBe(expected);
    expect(renderChat(pirate, { name: "llama-2", bosToken: BOS, eosToken: EOS })).toBe(expected);
    expect(renderChat(pirate.slice(1), { template: LLAMA2_HF, bosToken: BOS, eosToken: EOS })).toBe(
      renderChat(pirate.slice(1), { name: "llama-2", bosToken: BOS, eosToken: EOS }),
    );
    expectUserError(
      () => renderChat(pirate.slice(2), { template: LLAMA2_HF, bosToken: BOS, eosToken: EOS }),
      "model file",
      "Conversation roles must alternate",
    );
  });

  it("a name wins over a file template in renderChat", () => {
    expect(renderChat(noSystem, { template: ZEPHYR, name: "chatml", bosToken: BOS, eosToken: EOS })).toBe(
      render("chatml", noSystem),
    );
  });
});

describe("bad templates", () => {
  it("a template that does not parse is a UserError naming it", () => {
    expectUserError(() => chooseTemplate("{% if messages %}unterminated"), "model file", "parse");
    expectUserError(() => chooseTemplate("{{ messages[0]['content'] "), "model file", "parse");
    expectUserError(
      () => renderChat(noSystem, { template: "{% for m in messages %}", bosToken: BOS, eosToken: EOS }),
      "model file",
    );
  });

  it("a template that fails while rendering is a UserError naming it", () => {
    expectUserError(
      () =>
        renderChat(noSystem, {
          template: "{{ raise_exception('no tools here') }}",
          bosToken: BOS,
          eosToken: EOS,
        }),
      "model file",
      "no tools here",
    );
    expectUserError(
      () =>
        renderChat(noSystem, { template: "{{ messages | no_such_filter }}", bosToken: BOS, eosToken: EOS }),
      "model file",
    );
  });

  it("no template at all is a UserError suggesting --template", () => {
    expectUserError(() => renderChat(noSystem, { bosToken: BOS, eosToken: EOS }), "--template");
  });
});
