/**
 * Checks on reply texts used when cleaning and filtering datasets: refusal boilerplate and the
 * language a text is written in.
 */

/**
 * Phrases of refusal and "as an AI" boilerplate, lowercase with straight apostrophes. A reply that
 * contains one teaches a model to refuse or to talk about itself instead of answering.
 */
export const REFUSAL_PHRASES = [
  "as an ai language model",
  "as a language model",
  "as an ai model",
  "as an ai assistant",
  "as an artificial intelligence",
  "i am an ai language model",
  "i'm an ai language model",
  "i'm just an ai",
  "i am just an ai",
  "i'm sorry, but i cannot",
  "i am sorry, but i cannot",
  "i'm sorry, but i can't",
  "i am sorry, but i can't",
  "i'm sorry, i cannot",
  "i'm sorry, i can't",
  "i apologize, but i cannot",
  "i apologize, but i can't",
  "i cannot fulfill",
  "i can't fulfill",
  "i cannot comply",
  "i can't comply",
  "i cannot assist with",
  "i can't assist with",
  "i cannot provide assistance",
  "i am unable to provide",
  "i'm unable to provide",
  "i am not able to provide",
  "i'm not able to provide",
  "i don't have personal opinions",
  "i do not have personal opinions",
  "i don't have personal beliefs",
  "i do not have personal beliefs",
  "i don't have feelings",
  "i do not have feelings",
  "against my programming",
  "my programming does not allow",
  "it is not appropriate for me",
  "it's not appropriate for me",
  "openai's content policy",
  "violates openai",
  "trained by openai",
  "developed by openai",
] as const;

/** The refusal phrase a text contains, or undefined. */
export function findRefusal(text: string): string | undefined {
  const normalized = text.toLowerCase().replace(/[\u2018\u2019\u02bc]/g, "'");
  return REFUSAL_PHRASES.find((phrase) => normalized.includes(phrase));
}

// ---------------------------------------------------------------------------------------------
// Language

/** Frequent short words of languages written in Latin script (function words tell them apart). */
const STOPWORDS: Record<string, string> = {
  en:
    "the and is are was were of to in that it you for with this have not be on what can how my your do does will would an " +
    "a i me give make write list find which who from by at as or if all one some more these there they he she we our " +
    "his her them their about after into than then so up out yes get use new good day time people each other",
  de: "der die das und ist nicht ich du sie es ein eine zu mit auf für von den dem auch wie was sind wir ihr aber oder bitte kann",
  fr: "le la les et est une un des du je vous il elle que qui pas pour dans sur avec ce cette sont nous mais ou au aux très",
  es: "el la los las y es un una que de en por para con no se lo como más pero su sus yo tú usted está son del al",
  it: "il lo la gli le è un una che di per con non si come più ma sono del della nel io tu questo questa anche ho",
  pt: "os as é um uma que de em por para com não se como mais mas seu sua do da no na eu você está são",
  nl: "de het een en is van ik je niet dat die op te met voor zijn wat hoe ook maar er naar dit wij jij heb kan zo",
};
const STOPWORD_SETS = Object.fromEntries(
  Object.entries(STOPWORDS).map(([lang, words]) => [lang, new Set(words.split(" "))]),
);

/** Languages told apart by script alone, with their Unicode ranges. */
const SCRIPTS: { lang: string; ranges: [number, number][] }[] = [
  { lang: "ja", ranges: [[0x3040, 0x30ff]] },
  {
    lang: "ko",
    ranges: [
      [0xac00, 0xd7af],
      [0x1100, 0x11ff],
    ],
  },
  { lang: "zh", ranges: [[0x4e00, 0x9fff]] },
  { lang: "ru", ranges: [[0x0400, 0x04ff]] },
  { lang: "el", ranges: [[0x0370, 0x03ff]] },
  { lang: "ar", ranges: [[0x0600, 0x06ff]] },
  { lang: "he", ranges: [[0x0590, 0x05ff]] },
  { lang: "hi", ranges: [[0x0900, 0x097f]] },
  { lang: "th", ranges: [[0x0e00, 0x0e7f]] },
];

/** Language codes `detectLanguage` can return (besides "unknown"). */
export const DETECTABLE_LANGUAGES = [...Object.keys(STOPWORDS), ...SCRIPTS.map((s) => s.lang)];

/** Index in SCRIPTS of a character's script, -1 for Latin letters, -2 for anything else. */
function scriptOf(code: number): number {
  if (
    (code >= 0x41 && code <= 0x5a) ||
    (code >= 0x61 && code <= 0x7a) ||
    (code >= 0xc0 && code <= 0x24f && code !== 0xd7 && code !== 0xf7)
  ) {
    return -1;
  }
  if (code < 0x370) return -2;
  for (let s = 0; s < SCRIPTS.length; s++) {
    for (const [lo, hi] of SCRIPTS[s]!.ranges) if (code >= lo && code <= hi) return s;
  }
  return -2;
}

/**
 * The language of a text, from its script (ja, ko, zh, ru, el, ar, he, hi, th) or, for Latin
 * script, from its most frequent function words (en, de, fr, es, it, pt, nl); "unknown" when the
 * text is too short or fits none. Han characters with any kana are Japanese. Looks at the first
 * 4,000 characters.
 */
export function detectLanguage(text: string): string {
  const sample = text.length > 4000 ? text.slice(0, 4000) : text;
  const counts = new Int32Array(SCRIPTS.length);
  let latin = 0;
  for (let i = 0; i < sample.length; i++) {
    const s = scriptOf(sample.charCodeAt(i));
    if (s === -1) latin++;
    else if (s >= 0) counts[s]!++;
  }
  let best = -1;
  for (let s = 0; s < SCRIPTS.length; s++)
    if (counts[s]! > 0 && (best < 0 || counts[s]! > counts[best]!)) best = s;
  if (best >= 0 && counts[best]! > latin) {
    const lang = SCRIPTS[best]!.lang;
    return lang === "zh" && counts[0]! > 0 ? "ja" : lang;
  }
  if (latin === 0) return "unknown";
  const words = sample.toLowerCase().match(/[a-z\u00c0-\u024f']+/g) ?? [];
  let language = "unknown";
  let bestHits = 0;
  for (const [lang, set] of Object.entries(STOPWORD_SETS)) {
    let hits = 0;
    for (const w of words) if (set.has(w)) hits++;
    if (hits > bestHits) {
      language = lang;
      bestHits = hits;
    }
  }
  // Two function words at least, and one word in twenty, before a Latin text gets a language.
  return bestHits >= 2 && bestHits * 20 >= words.length ? language : "unknown";
}

/**
 * False when a text is detected to be in another language than `lang`; a text too short or too
 * plain to tell (detectLanguage says "unknown") passes.
 */
export function inLanguage(text: string, lang: string): boolean {
  const detected = detectLanguage(text);
  return detected === "unknown" || detected === lang;
}
