// Copies the chat page's libraries from node_modules into build/public/vendor, where the server
// serves them at /vendor/: prebuilt browser files, as their packages ship them, with their
// licences. highlight.js comes as its core and the grammars of a few common languages, joined
// into one module (each grammar file registers itself on `hljs`, the core the module imports).
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, "build", "public", "vendor");
/** The folder of an installed package (a devDependency, so in the project's node_modules). */
function pkg(name) {
  const dir = join(root, "node_modules", name);
  if (!existsSync(join(dir, "package.json"))) throw new Error(`${name} is not installed: run npm install`);
  return dir;
}

const LANGUAGES = [
  "bash", "c", "cpp", "css", "diff", "go", "java", "javascript", "json", "markdown",
  "python", "rust", "sql", "typescript", "xml", "yaml",
];

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

/** A library file as shipped, less the source-map comment (the maps are not served). */
function copy(from, to) {
  writeFileSync(join(out, to), readFileSync(from, "utf8").replace(/\n\/\/# sourceMappingURL=\S+\s*$/, "\n"));
}

const marked = pkg("marked");
copy(join(marked, "lib", "marked.esm.js"), "marked.esm.js");
copyFileSync(join(marked, "LICENSE"), join(out, "LICENSE-marked.txt"));

const purify = pkg("dompurify");
copy(join(purify, "dist", "purify.min.js"), "purify.min.js");
copyFileSync(join(purify, "LICENSE"), join(out, "LICENSE-dompurify.txt"));

const hljs = pkg("@highlightjs/cdn-assets");
copy(join(hljs, "es", "core.min.js"), "highlight-core.min.js");
const grammars = LANGUAGES.map((l) => readFileSync(join(hljs, "languages", `${l}.min.js`), "utf8").trim());
writeFileSync(
  join(out, "highlight.js"),
  `// highlight.js ${JSON.parse(readFileSync(join(hljs, "package.json"), "utf8")).version}: the core and the grammars of ${LANGUAGES.join(", ")}.\n` +
    `import hljs from "./highlight-core.min.js";\n${grammars.join("\n")}\nexport default hljs;\n`,
);
copyFileSync(join(hljs, "LICENSE"), join(out, "LICENSE-highlight.js.txt"));
console.log(`chat page libraries copied to ${out}`);
