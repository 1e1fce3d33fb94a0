import { describe, expect, it } from "vitest";
import { decodeEntities, htmlToMarkdown, looksLikeHtml } from "../src/data/html-to-markdown.js";

describe("HTML to markdown", () => {
  it("converts a ChatGPT answer as ShareGPT scraped it: code block with language, no Copy code", () => {
    const html =
      '<div class="markdown prose w-full break-words dark:prose-invert light"><p>Here is a function:</p>' +
      '<pre><div class="bg-black mb-4 rounded-md"><div class="flex items-center relative text-gray-200 bg-gray-800 px-4 py-2 text-xs font-sans">' +
      '<span class="">python</span><button class="flex ml-auto gap-2"><svg stroke="currentColor" viewBox="0 0 24 24"><path d="M16 4h2"></path></svg>Copy code</button></div>' +
      '<div class="p-4 overflow-y-auto"><code class="!whitespace-pre hljs language-python"><span class="hljs-keyword">def</span> ' +
      '<span class="hljs-title function_">add</span>(<span class="hljs-params">a, b</span>):\n    <span class="hljs-keyword">return</span> a &lt; b\n</code></div></div></pre>' +
      "<p>It compares <code>a</code> and <code>b</code>.</p></div>";
    expect(htmlToMarkdown(html)).toBe(
      "Here is a function:\n\n```python\ndef add(a, b):\n    return a < b\n```\n\nIt compares `a` and `b`.",
    );
  });

  it("renders headings, emphasis, links, rules, quotes, breaks and entities", () => {
    const html =
      "<h2>Plan &amp; steps</h2><p>Do <strong>this</strong> and <em>that</em>, see " +
      '<a href="https://example.test/x">the guide</a>.<br>Next line&nbsp;here &#8212; &#x263A;</p><hr>' +
      "<blockquote><p>First</p><p>Second</p></blockquote><p><del>old</del></p>";
    expect(htmlToMarkdown(html)).toBe(
      "## Plan & steps\n\nDo **this** and *that*, see [the guide](https://example.test/x).\nNext line here — ☺\n\n---\n\n> First\n>\n> Second\n\n~~old~~",
    );
  });

  it("renders nested and numbered lists, with code inside an item", () => {
    const html =
      '<ol start="3"><li>Install<ul><li>node</li><li>npm</li></ul></li><li><p>Run it:</p><pre><code class="language-sh">npm start\nnpm test</code></pre></li></ol>';
    expect(htmlToMarkdown(html)).toBe(
      "3. Install\n   - node\n   - npm\n4. Run it:\n\n   ```sh\n   npm start\n   npm test\n   ```",
    );
  });

  it("renders tables as pipe tables", () => {
    const html =
      "<table><thead><tr><th>Name</th><th>Score</th></tr></thead><tbody><tr><td>Ann</td><td>3 | 4</td></tr><tr><td><b>Bo</b></td><td>5</td></tr></tbody></table>";
    expect(htmlToMarkdown(html)).toBe("| Name | Score |\n| --- | --- |\n| Ann | 3 \\| 4 |\n| **Bo** | 5 |");
  });

  it("tolerates unclosed and stray tags, comments, scripts and styles", () => {
    expect(
      htmlToMarkdown("<p>one<p>two</span><!-- note --><script>alert(1)</script><style>p{}</style>"),
    ).toBe("one\n\ntwo");
    expect(htmlToMarkdown("<ul><li>a<li>b</ul>")).toBe("- a\n- b");
    expect(htmlToMarkdown("<code>uses `ticks`</code>")).toBe("`` uses `ticks` ``");
    expect(htmlToMarkdown("<pre><code>```\ninner\n```</code></pre>")).toBe("````\n```\ninner\n```\n````");
  });

  it("tells HTML from text that mentions a tag", () => {
    expect(looksLikeHtml("<p>Hello</p>")).toBe(true);
    expect(looksLikeHtml('<div class="markdown"><p>x</p></div>')).toBe(true);
    expect(looksLikeHtml("Use the <div> element to group content.")).toBe(false);
    expect(looksLikeHtml("if a < b and c > d")).toBe(false);
    expect(decodeEntities("&lt;&gt;&amp;&quot;&#39;&unknown;&#0;")).toBe("<>&\"'&unknown;&#0;");
  });
});
