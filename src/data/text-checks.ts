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

/** Languages told apart by script alone. */
const SCRIPTS: { lang: string; pattern: RegExp }[] = [
  { lang: "ja", pattern: /[\u3040-\u30ff]/g },
  { lang: "ko", pattern: /[\uac00-\ud7af\u1100-\u11ff]/g },
  { lang: "zh", pattern: /[\u4e00-\u9fff]/g },
  { lang: "ru", pattern: /[\u0400-\u04ff]/g },
  { lang: "el", pattern: /[\u0370-\u03ff]/g },
  { lang: "ar", pattern: /[\u0600-\u06ff]/g },
  { lang: "he", pattern: /[\u0590-\u05ff]/g },
  { lang: "hi", pattern: /[\u0900-\u097f]/g },
  { lang: "th", pattern: /[\u0e00-\u0e7f]/g },
];

/** Language codes `detectLanguage` can return (besides "unknown"). */
export const DETECTABLE_LANGUAGES = [...Object.keys(STOPWORDS), ...SCRIPTS.map((s) => s.lang)];

/**
 * The language of a text, from its script (ja, ko, zh, ru, el, ar, he, hi, th) or, for Latin
 * script, from its most frequent function words (en, de, fr, es, it, pt, nl); "unknown" when the
 * text is too short or fits none. Japanese counts kana; Han characters with kana are Japanese.
 * Looks at the first 4,000 characters.
 */
export function detectLanguage(text: string): string {
  const sample = text.slice(0, 4000);
  const letters = sample.match(/\p{L}/gu)?.length ?? 0;
  if (letters === 0) return "unknown";
  const latin = sample.match(/[A-Za-z\u00c0-\u024f]/g)?.length ?? 0;
  let bestScript = "";
  let bestCount = 0;
  for (const { lang, pattern } of SCRIPTS) {
    const count = sample.match(pattern)?.length ?? 0;
    if (count > bestCount) {
      bestScript = lang;
      bestCount = count;
    }
  }
  if (bestScript === "zh" && (sample.match(SCRIPTS[0]!.pattern)?.length ?? 0) > 0) bestScript = "ja";
  if (bestCount > latin) return bestScript;
  const words = sample.toLowerCase().match(/[a-z\u00c0-\u024f']+/g) ?? [];
  let best = "unknown";
  let bestHits = 0;
  for (const [lang, set] of Object.entries(STOPWORD_SETS)) {
    let hits = 0;
    for (const w of words) if (set.has(w)) hits++;
    if (hits > bestHits) {
      best = lang;
      bestHits = hits;
    }
  }
  // Two function words at least, and one word in twenty, before a Latin text gets a language.
  return bestHits >= 2 && bestHits * 20 >= words.length ? best : "unknown";
}

/**
 * False when a text is detected to be in another language than `lang`; a text too short or too
 * plain to tell (detectLanguage says "unknown") passes.
 */
export function inLanguage(text: string, lang: string): boolean {
  const detected = detectLanguage(text);
  return detected === "unknown" || detected === lang;
}
