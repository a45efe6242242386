// Compares conformance results per scenario: direct (fixture) vs gateway (Portcullis in
// front of the fixture). Every scenario that passes directly must pass through the gateway.
//
//   node compare.mjs --out OUT [--markdown results.md] SUITE...
//
// reads OUT/{direct,gateway}/SUITE/server-<scenario>-<timestamp>/checks.json, prints the
// table, optionally writes it as markdown, and ends with exactly one line
// `conformance: N passed, M failed` (N = scenarios passing directly and through the
// gateway, M = scenarios passing directly but failing through it). Exit code 1 if M > 0.
//
// A scenario passes when none of its checks has status FAILURE (WARNING, INFO and
// SKIPPED do not fail it), the same rule the conformance CLI uses for its exit code.
// A scenario whose checks are all INFO/SKIPPED is "skipped" and counts neither way.
import fs from "node:fs";
import path from "node:path";

const SUITE_TITLES = {
  legacy: "@modelcontextprotocol/conformance 0.1.13, --suite all",
  "2025-11-25": "@modelcontextprotocol/conformance 0.2.0-alpha.12, --requirements 2025-11-25",
  "2026-07-28": "@modelcontextprotocol/conformance 0.2.0-alpha.12, --requirements 2026-07-28",
};

function parseArgs(argv) {
  const args = { out: null, markdown: null, suites: [] };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--out") args.out = argv[++i];
    else if (argv[i] === "--markdown") args.markdown = argv[++i];
    else args.suites.push(argv[i]);
  }
  if (!args.out || args.suites.length === 0) {
    console.error("usage: node compare.mjs --out OUT [--markdown FILE] SUITE...");
    process.exit(2);
  }
  return args;
}

// scenario name -> checks array, in the order the suite ran them.
function load(dir) {
  const scenarios = new Map();
  if (!fs.existsSync(dir)) return scenarios;
  const entries = fs
    .readdirSync(dir)
    .map((d) => {
      const m = /^server-(.+)-(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d-\d+Z)$/.exec(d);
      return m && { dir: d, scenario: m[1], ts: m[2] };
    })
    .filter(Boolean)
    .sort((a, b) => a.ts.localeCompare(b.ts));
  for (const e of entries) {
    const file = path.join(dir, e.dir, "checks.json");
    let checks = null;
    try {
      checks = JSON.parse(fs.readFileSync(file, "utf8"));
    } catch {
      checks = null; // unreadable: counted as a failure below
    }
    scenarios.set(e.scenario, Array.isArray(checks) ? checks : null);
  }
  return scenarios;
}

function verdict(checks) {
  if (checks === undefined) return { pass: false, text: "not run" };
  if (checks === null) return { pass: false, text: "no results" };
  const scored = checks.filter((c) => ["SUCCESS", "FAILURE", "WARNING"].includes(c.status));
  if (scored.length === 0) return { pass: false, skipped: true, text: "skipped" };
  const failed = scored.filter((c) => c.status === "FAILURE").length;
  const warned = scored.filter((c) => c.status === "WARNING").length;
  if (failed > 0) return { pass: false, text: `FAIL (${failed} of ${scored.length} checks)` };
  return { pass: true, text: warned > 0 ? `pass (${warned} warning${warned > 1 ? "s" : ""})` : "pass" };
}

const args = parseArgs(process.argv.slice(2));
const rows = [];
const checkDiffs = [];
for (const suite of args.suites) {
  const direct = load(path.join(args.out, "direct", suite));
  const gateway = load(path.join(args.out, "gateway", suite));
  const names = [...direct.keys(), ...[...gateway.keys()].filter((k) => !direct.has(k))];
  for (const scenario of names) {
    const d = verdict(direct.get(scenario));
    const g = verdict(gateway.get(scenario));
    const note = d.skipped
      ? "skipped by the suite"
      : d.pass
        ? g.pass
          ? "ok"
          : "REGRESSION"
        : g.pass
          ? "passes only via gateway"
          : "fails directly";
    rows.push({ suite, scenario, direct: d.text, gateway: g.text, note, regression: d.pass && !g.pass, ok: d.pass && g.pass });
    // Check-level detail, also for scenarios that fail directly for other reasons.
    const gChecks = gateway.get(scenario) ?? [];
    for (const c of direct.get(scenario) ?? []) {
      if (c.status !== "SUCCESS") continue;
      const gc = gChecks.find((x) => x.id === c.id);
      if (!gc || gc.status !== "SUCCESS") {
        checkDiffs.push({ suite, scenario, id: c.id, gateway: gc ? gc.status : "missing", error: gc?.errorMessage ?? "" });
      }
    }
  }
}

const passed = rows.filter((r) => r.ok).length;
const failed = rows.filter((r) => r.regression).length;
const header = ["suite", "scenario", "direct", "gateway", "verdict"];
const cells = rows.map((r) => [r.suite, r.scenario, r.direct, r.gateway, r.note]);

// Plain table on stdout.
const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)));
const line = (c) => c.map((v, i) => v.padEnd(widths[i])).join("  ").trimEnd();
console.log("");
console.log(line(header));
console.log(line(widths.map((w) => "-".repeat(w))));
for (const c of cells) console.log(line(c));
if (checkDiffs.length > 0) {
  console.log("\nchecks that succeed directly but not through the gateway:");
  for (const d of checkDiffs) {
    console.log(`  ${d.suite} ${d.scenario} ${d.id}: ${d.gateway}${d.error ? ` (${d.error})` : ""}`);
  }
}

if (args.markdown) {
  const esc = (v) => String(v).replace(/\|/g, "\\|").replace(/\n/g, " ");
  const md = [
    "# Conformance results",
    "",
    "Generated by `tests/conformance/run.sh`: the `@modelcontextprotocol/conformance` server",
    "scenarios against the conformance fixture (rmcp) directly and through Portcullis.",
    "A scenario passes when none of its checks fails (warnings do not fail it).",
    "",
    "Suites:",
    "",
    ...args.suites.map((s) => `- \`${s}\`: ${SUITE_TITLES[s] ?? s}`),
    "",
    `| ${header.join(" | ")} |`,
    `|${header.map(() => "---").join("|")}|`,
    ...cells.map((c) => `| ${c.map(esc).join(" | ")} |`),
    "",
  ];
  if (checkDiffs.length > 0) {
    md.push("Checks that succeed directly but not through the gateway:", "");
    for (const d of checkDiffs) {
      md.push(`- \`${d.suite}\` ${d.scenario} \`${d.id}\`: ${d.gateway}${d.error ? ` (${esc(d.error)})` : ""}`);
    }
    md.push("");
  }
  md.push(`\`conformance: ${passed} passed, ${failed} failed\``, "");
  fs.writeFileSync(args.markdown, md.join("\n"));
}

console.log("");
console.log(`conformance: ${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
