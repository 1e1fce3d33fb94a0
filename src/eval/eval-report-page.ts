// The evaluation report's own style, added after the run report's (its colours, light and dark,
// cards and tables). Charts are tables whose bars are small inline SVGs drawn when the page is
// written: they scale with the page, need no script, and read as a table to a screen reader.
import { PAGE_CSS } from "./report-page.js";

/** Colours of win, tie and loss (readable on light and dark backgrounds). */
export const OUTCOME_COLORS = { win: "#17a673", tie: "#8a96a3", loss: "#e4572e" } as const;

export const EVAL_PAGE_CSS = `${PAGE_CSS}
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; margin: 0 0 8px; padding: 0; list-style: none; font-size: 13px; }
.legend li { overflow-wrap: anywhere; }
table.results { min-width: 680px; }
table.results td { overflow-wrap: normal; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 520px), 1fr)); gap: 14px; }
figure.plot { margin: 0; }
figure.plot figcaption { margin: 0 0 8px; }
figure.plot figcaption p { color: var(--muted); margin: 2px 0 0; font-size: 12.5px; }
table.bars { width: 100%; table-layout: fixed; font-size: 12.5px; }
table.bars th { width: 30%; white-space: normal; overflow-wrap: anywhere; font-weight: 500; padding: 5px 8px 5px 0; }
table.bars td { padding: 5px 0; }
table.bars tr.total th { font-weight: 700; }
.bar-line { display: flex; align-items: center; gap: 8px; min-height: 14px; }
.bar-line + .bar-line { margin-top: 3px; }
svg.bar { flex: 1 1 auto; min-width: 0; height: 12px; display: block; }
svg.bar .track { fill: var(--grid); }
svg.bar .axis { fill: var(--muted); }
.bar-value { flex: 0 0 auto; width: 10em; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; line-height: 1.25; color: var(--fg); }
.bar-value.none { color: var(--muted); }
.vh { position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; border: 0; }
.outcome-win { background: ${OUTCOME_COLORS.win}; }
.outcome-tie { background: ${OUTCOME_COLORS.tie}; }
.outcome-loss { background: ${OUTCOME_COLORS.loss}; }
@media (max-width: 600px) { table.bars th { width: 34%; } .bar-value { width: 7.5em; } }
`;
