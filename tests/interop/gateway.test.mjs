// Interop tests: the official TypeScript MCP SDK client talks to the reference
// server (@modelcontextprotocol/server-everything, streamableHttp) *through* the
// Portcullis gateway.
//
//   SDK Client --HTTP--> portcullis (public listener, route /mcp) --HTTP--> server-everything /mcp
//
// Run with `bash run.sh` (installs the pinned packages, then `node --test`).
// Environment:
//   PORTCULLIS_BIN   gateway binary (default: <repo>/target/debug/portcullis)
//   INTEROP_VERBOSE  if set, always print the children's logs in the after hook
//
// Every wait is a poll against a deadline; there are no fixed sleeps.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import {
  CallToolResultSchema,
  CreateMessageRequestSchema,
  CreateTaskResultSchema,
  ElicitRequestSchema,
  GetTaskResultSchema,
  ListTasksResultSchema,
} from "@modelcontextprotocol/sdk/types.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  discoverOAuthProtectedResourceMetadata,
  extractWWWAuthenticateParams,
} from "@modelcontextprotocol/sdk/client/auth.js";
import crypto from "node:crypto";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");
const PORTCULLIS_BIN = process.env.PORTCULLIS_BIN || path.join(REPO, "target", "debug", "portcullis");
const FIXTURE_BIN = process.env.FIXTURE_BIN || path.join(REPO, "target", "debug", "portcullis-conformance-fixture");
const EVERYTHING_JS = path.join(HERE, "node_modules", "@modelcontextprotocol", "server-everything", "dist", "index.js");
const PRELOAD = path.join(HERE, "force-loopback.mjs");

const STARTUP_DEADLINE_MS = 30_000; // upstream + gateway start-up, each
const TEST_TIMEOUT_MS = 30_000; // every individual test
const POLL_MS = 25; // poll interval while waiting for a condition

// ---------------------------------------------------------------------------
// helpers

const delay = (ms) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1 (bind :0, read the port, close). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** One TCP connect attempt; resolves true on success, false on any error. */
function tryConnect(host, port, timeoutMs = 500) {
  return new Promise((resolve) => {
    const sock = net.connect({ host, port });
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(timeoutMs, () => done(false));
    sock.once("connect", () => done(true));
    sock.once("error", () => done(false));
  });
}

/** Polls `probe` (async → truthy) until it succeeds, the child dies, or the deadline passes. */
async function pollUntil(what, probe, { child, deadlineMs = STARTUP_DEADLINE_MS } = {}) {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    if (child?.exited) {
      throw new Error(`${what}: ${child.name} exited early (${child.exitDescription()})\n${child.tail()}`);
    }
    let ok = false;
    try {
      ok = await probe();
    } catch {
      ok = false;
    }
    if (ok) return ok;
    if (Date.now() >= deadline) {
      throw new Error(`${what}: not ready within ${deadlineMs} ms${child ? `\n${child.tail()}` : ""}`);
    }
    await delay(POLL_MS);
  }
}

/** A spawned child process whose stdout/stderr lines are kept (bounded) for diagnostics. */
class Child {
  static all = new Set();

  constructor(name, command, args, options) {
    this.name = name;
    this.lines = [];
    this.lineListeners = new Set();
    this.exited = false;
    this.code = null;
    this.signal = null;
    this.proc = spawn(command, args, { ...options, stdio: ["ignore", "pipe", "pipe"] });
    Child.all.add(this);
    this.exitPromise = new Promise((resolve) => {
      this.proc.once("exit", (code, signal) => {
        this.exited = true;
        this.code = code;
        this.signal = signal;
        Child.all.delete(this);
        resolve();
      });
      this.proc.once("error", (err) => {
        // spawn failure (e.g. ENOENT): no "exit" event follows.
        this.lines.push(`[spawn error] ${err.message}`);
        this.exited = true;
        Child.all.delete(this);
        resolve();
      });
    });
    for (const [stream, tag] of [[this.proc.stdout, "out"], [this.proc.stderr, "err"]]) {
      // Always drain both pipes so the child never blocks on a full pipe.
      readline.createInterface({ input: stream, crlfDelay: Infinity }).on("line", (line) => {
        this.lines.push(`[${tag}] ${line}`);
        if (this.lines.length > 2000) this.lines.splice(0, this.lines.length - 2000);
        for (const l of this.lineListeners) l(line, tag);
      });
    }
  }

  exitDescription() {
    return this.signal ? `signal ${this.signal}` : `code ${this.code}`;
  }

  tail(n = 40) {
    return `--- last ${n} log lines of ${this.name} ---\n${this.lines.slice(-n).join("\n")}`;
  }

  /** Resolves with the first stderr/stdout line for which `pick` returns a value. */
  waitForLine(what, pick, deadlineMs = STARTUP_DEADLINE_MS) {
    return new Promise((resolve, reject) => {
      const finish = (fn, v) => {
        clearTimeout(timer);
        clearInterval(watch);
        this.lineListeners.delete(listener);
        fn(v);
      };
      const listener = (line, tag) => {
        const v = pick(line, tag);
        if (v !== undefined) finish(resolve, v);
      };
      const timer = setTimeout(
        () => finish(reject, new Error(`${what}: no such log line within ${deadlineMs} ms\n${this.tail()}`)),
        deadlineMs,
      );
      const watch = setInterval(() => {
        if (this.exited) {
          finish(reject, new Error(`${what}: ${this.name} exited early (${this.exitDescription()})\n${this.tail()}`));
        }
      }, POLL_MS);
      this.lineListeners.add(listener);
    });
  }

  /** SIGTERM, wait (bounded), then SIGKILL and wait. Safe to call more than once. */
  async stop(graceMs = 5_000) {
    if (this.exited) return;
    this.proc.kill("SIGTERM");
    const timedOut = await Promise.race([this.exitPromise.then(() => false), delay(graceMs).then(() => true)]);
    if (timedOut && !this.exited) {
      this.proc.kill("SIGKILL");
      await this.exitPromise;
    }
  }
}

// Last-resort cleanup if this process ends without reaching the after hook. The
// `node --test` runner SIGTERMs this file's process when it is itself interrupted
// (Ctrl-C, CI cancel, a closed stdout pipe); the default SIGTERM action would skip
// the "exit" event and orphan the children, hence the signal handlers.
function killAllChildren() {
  for (const c of Child.all) {
    try {
      c.proc.kill("SIGKILL");
    } catch {
      /* already gone */
    }
  }
}
const tempDirs = new Set();
process.on("exit", () => {
  killAllChildren();
  for (const d of tempDirs) fs.rmSync(d, { recursive: true, force: true });
});
for (const [sig, num] of [["SIGTERM", 15], ["SIGINT", 2], ["SIGHUP", 1]]) {
  process.once(sig, () => {
    killAllChildren();
    process.exit(128 + num);
  });
}

/** Starts server-everything (streamableHttp) on a free loopback port; retries if the port was taken meanwhile. */
async function startEverything() {
  let lastErr;
  for (let attempt = 1; attempt <= 3; attempt++) {
    const port = await freePort();
    const child = new Child(
      `server-everything(:${port})`,
      process.execPath,
      ["--import", PRELOAD, EVERYTHING_JS, "streamableHttp"],
      {
        cwd: HERE,
        // Minimal environment: server-everything's `get-env` tool returns its whole env.
        env: { PATH: process.env.PATH ?? "", HOME: os.tmpdir(), PORT: String(port), BIND_HOST: "127.0.0.1" },
      },
    );
    try {
      await pollUntil(`server-everything on 127.0.0.1:${port}`, () => tryConnect("127.0.0.1", port), { child });
      return { child, port };
    } catch (err) {
      lastErr = err;
      await child.stop();
    }
  }
  throw lastErr;
}

function gatewayConfig(upstreamPort, auth = "") {
  return `listeners:
  public: 127.0.0.1:0
  admin: 127.0.0.1:0
server:
  threads: 2
  grace_period: 0s
access_log:
  enabled: false
routes:
  - path: /mcp
    upstream: everything
${auth}upstreams:
  everything:
    url: http://127.0.0.1:${upstreamPort}/mcp
`;
}

/** A route auth block trusting HS256 tokens from `issuer` signed with the secret in `secretFile`. */
function authBlock(issuer, secretFile) {
  return `    auth:
      required_scopes: [mcp:tools]
      jwt:
        issuers:
          - issuer: ${issuer}
            audiences: [interop]
            secret_file: ${secretFile}
`;
}

/** Signs an HS256 JWT with node's crypto (no extra package). */
function hs256(claims, secret) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  const sig = crypto.createHmac("sha256", secret).update(head).digest("base64url");
  return `${head}.${sig}`;
}

/** Starts `portcullis run`, parses its "portcullis listening" JSON log line, then waits for /healthz = 200. */
async function startGateway(configFile) {
  if (!fs.existsSync(PORTCULLIS_BIN)) {
    throw new Error(`gateway binary not found: ${PORTCULLIS_BIN} (build it, or set PORTCULLIS_BIN)`);
  }
  const child = new Child("portcullis", PORTCULLIS_BIN, ["--log-format", "json", "run", "--config", configFile], {
    cwd: path.dirname(configFile),
    env: process.env,
  });
  const { publicAddr, adminAddr, tlsAddr } = await child.waitForLine("gateway 'portcullis listening' log line", (line, tag) => {
    if (tag !== "err") return undefined;
    let v;
    try {
      v = JSON.parse(line);
    } catch {
      return undefined;
    }
    if (v?.fields?.message !== "portcullis listening") return undefined;
    return { publicAddr: v.fields.public, adminAddr: v.fields.admin, tlsAddr: v.fields.tls };
  });
  assert.match(publicAddr, /^127\.0\.0\.1:\d+$/, "public listener address");
  assert.match(adminAddr, /^127\.0\.0\.1:\d+$/, "admin listener address");
  await pollUntil(
    `gateway http://${adminAddr}/healthz`,
    async () => {
      const res = await fetch(`http://${adminAddr}/healthz`, { signal: AbortSignal.timeout(1_000) });
      await res.body?.cancel();
      return res.status === 200;
    },
    { child },
  );
  return { child, publicAddr, adminAddr, tlsAddr };
}

/** Raw JSON-RPC POST (no SDK) to the gateway's MCP endpoint; returns status, headers and the parsed body. */
async function rawPost(url, body, { sessionId, protocolVersion } = {}) {
  const headers = {
    "content-type": "application/json",
    accept: "application/json, text/event-stream",
  };
  if (sessionId) headers["mcp-session-id"] = sessionId;
  if (protocolVersion) headers["mcp-protocol-version"] = protocolVersion;
  const res = await fetch(url, {
    method: "POST",
    headers,
    body: typeof body === "string" ? body : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, contentType: res.headers.get("content-type") ?? "", text, json };
}

// ---------------------------------------------------------------------------
// the suite

describe("portcullis + TypeScript SDK client + server-everything (streamable HTTP)", () => {
  let tmp;
  let upstream; // { child, port }
  let gateway; // { child, publicAddr, adminAddr }
  let mcpUrl;
  let client;
  let transport;
  const clientErrors = [];
  let failed = false;

  // Wraps a test body so the after hook knows whether to print the children's logs.
  const guard = (fn) => async (t) => {
    try {
      await fn(t);
    } catch (err) {
      failed = true;
      throw err;
    }
  };

  before(
    guard(async () => {
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), "portcullis-interop-"));
      tempDirs.add(tmp);
      upstream = await startEverything();
      const configFile = path.join(tmp, "portcullis.yaml");
      fs.writeFileSync(configFile, gatewayConfig(upstream.port));
      gateway = await startGateway(configFile);
      mcpUrl = `http://${gateway.publicAddr}/mcp`;
    }),
    { timeout: 2 * STARTUP_DEADLINE_MS + 10_000 },
  );

  after(
    async () => {
      try {
        await client?.close();
      } catch {
        /* best effort */
      }
      if (failed || process.env.INTEROP_VERBOSE) {
        if (clientErrors.length) console.error(`SDK client errors:\n${clientErrors.map(String).join("\n")}`);
        for (const c of [gateway?.child, upstream?.child]) if (c) console.error(c.tail(80));
      }
      // Stop the gateway first (it holds connections to the upstream), then the upstream.
      await gateway?.child.stop();
      await upstream?.child.stop();
      if (tmp) {
        fs.rmSync(tmp, { recursive: true, force: true });
        tempDirs.delete(tmp);
      }
    },
    { timeout: 30_000 },
  );

  it(
    "initialize through the gateway yields a session id",
    { timeout: TEST_TIMEOUT_MS },
    guard(async () => {
      client = new Client({ name: "portcullis-interop", version: "0.0.0" }, { capabilities: {} });
      client.onerror = (e) => clientErrors.push(e);
      transport = new StreamableHTTPClientTransport(new URL(mcpUrl));
      await client.connect(transport);

      assert.equal(typeof transport.sessionId, "string", "Mcp-Session-Id returned on initialize");
      assert.match(transport.sessionId, /^[\x21-\x7e]+$/, "session id is visible ASCII");
      assert.ok(transport.protocolVersion, "a protocol version was negotiated");
      const info = client.getServerVersion();
      assert.equal(info?.name, "mcp-servers/everything", "serverInfo comes from the upstream");
      assert.ok(client.getServerCapabilities()?.tools, "upstream advertises tools");
    }),
  );

  it(
    "tools/list includes echo",
    { timeout: TEST_TIMEOUT_MS },
    guard(async () => {
      const { tools } = await client.listTools();
      const names = tools.map((t) => t.name);
      assert.ok(names.includes("echo"), `echo in ${names.join(", ")}`);
      assert.ok(names.includes("trigger-long-running-operation"), "long-running tool listed");
    }),
  );

  it(
    "tools/call echo returns the echoed text",
    { timeout: TEST_TIMEOUT_MS },
    guard(async () => {
      const res = await client.callTool({ name: "echo", arguments: { message: "hello through portcullis" } });
      assert.notEqual(res.isError, true);
      assert.deepEqual(res.content, [{ type: "text", text: "Echo: hello through portcullis" }]);
    }),
  );

  it(
    "long-running tool streams progress notifications, then its result",
    { timeout: TEST_TIMEOUT_MS },
    guard(async () => {
      // server-everything 2026.8.31: trigger-long-running-operation(duration [s], steps) sends
      // notifications/progress {progress: i, total: steps} for i = 1..steps, but only when the
      // request carries _meta.progressToken (the SDK sets it when onprogress is given). The
      // gateway must pass the token through so the SDK can route the notifications back.
      const progress = [];
      const res = await client.callTool(
        { name: "trigger-long-running-operation", arguments: { duration: 1, steps: 3 } },
        undefined,
        { onprogress: (p) => progress.push(p), timeout: TEST_TIMEOUT_MS - 5_000 },
      );
      assert.ok(progress.length >= 2, `expected >= 2 progress callbacks, got ${JSON.stringify(progress)}`);
      for (let i = 0; i < progress.length; i++) {
        assert.equal(progress[i].total, 3, "progress total");
        if (i > 0) assert.ok(progress[i].progress > progress[i - 1].progress, "progress increases");
      }
      assert.notEqual(res.isError, true);
      assert.equal(res.content?.[0]?.type, "text");
      assert.match(res.content[0].text, /^Long running operation completed\. Duration: 1 seconds, Steps: 3\.$/);
    }),
  );

  it(
    "ping",
    { timeout: TEST_TIMEOUT_MS },
    guard(async () => {
      // The SDK parses the ping result with a strict empty-object schema.
      const res = await client.ping();
      assert.deepEqual(res, {});
    }),
  );

  it(
    "malformed JSON body gets HTTP 400 / -32700 and the gateway keeps serving",
    { timeout: TEST_TIMEOUT_MS },
    guard(async (t) => {
      const res = await rawPost(mcpUrl, '{"jsonrpc":"2.0","id":1,"method":"tools/list",', {
        sessionId: transport.sessionId,
        protocolVersion: transport.protocolVersion,
      });
      t.diagnostic(`malformed POST -> ${res.status} ${res.contentType} ${res.text.slice(0, 300)}`);
      assert.equal(res.status, 400, `status (body: ${res.text})`);
      assert.ok(res.json, `body is JSON (got ${JSON.stringify(res.text)})`);
      assert.equal(res.json.jsonrpc, "2.0");
      assert.equal(res.json.error?.code, -32700, `JSON-RPC parse error code (body: ${res.text})`);

      // Still serving: the same session keeps working, and the admin endpoint is healthy.
      const echo = await client.callTool({ name: "echo", arguments: { message: "still here" } });
      assert.deepEqual(echo.content, [{ type: "text", text: "Echo: still here" }]);
      const health = await fetch(`http://${gateway.adminAddr}/healthz`, { signal: AbortSignal.timeout(5_000) });
      await health.body?.cancel();
      assert.equal(health.status, 200);
    }),
  );

  it(
    "terminateSession() ends the session; the old session id is then rejected",
    { timeout: TEST_TIMEOUT_MS },
    guard(async (t) => {
      const oldSessionId = transport.sessionId;
      const protocolVersion = transport.protocolVersion;
      assert.ok(oldSessionId);

      // HTTP DELETE with Mcp-Session-Id. The SDK throws on any non-2xx except 405; a 405
      // ("termination not supported") would leave the session alive and fail the check below.
      await transport.terminateSession();
      assert.equal(transport.sessionId, undefined, "SDK forgot the session id");

      const res = await rawPost(
        mcpUrl,
        { jsonrpc: "2.0", id: 4242, method: "tools/list", params: {} },
        { sessionId: oldSessionId, protocolVersion },
      );
      t.diagnostic(`request with terminated session id -> ${res.status} ${res.text.slice(0, 300)}`);
      // The MCP spec (streamable HTTP, session management) says a request carrying a terminated
      // or unknown Mcp-Session-Id MUST get HTTP 404. If the gateway tracks sessions it answers 404
      // itself; if it forwards the request, server-everything 2026.8.31 answers HTTP 400
      // {"code":-32000,"message":"Bad Request: No valid session ID provided"} (an upstream quirk,
      // not something this suite asserts against). Either way the session must be gone, never 2xx.
      assert.ok(
        res.status === 404 || res.status === 400,
        `expected 404 (spec) or 400 (server-everything quirk), got ${res.status}: ${res.text}`,
      );

      await client.close();
      client = undefined;
    }),
  );
});

describe("an authenticated route: the SDK client meets the 401, finds the metadata, then calls with a token", () => {
  let tmp;
  let upstream;
  let gateway;
  let mcpUrl;
  const issuer = "https://idp.interop.test";
  const secret = crypto.randomBytes(32).toString("hex");

  before(
    async () => {
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), "portcullis-interop-auth-"));
      tempDirs.add(tmp);
      upstream = await startEverything();
      const secretFile = path.join(tmp, "hmac.key");
      fs.writeFileSync(secretFile, secret);
      const configFile = path.join(tmp, "portcullis.yaml");
      fs.writeFileSync(configFile, gatewayConfig(upstream.port, authBlock(issuer, secretFile)));
      gateway = await startGateway(configFile);
      mcpUrl = `http://${gateway.publicAddr}/mcp`;
    },
    { timeout: 2 * STARTUP_DEADLINE_MS + 10_000 },
  );

  after(() => {
    killAllChildren();
  });

  it(
    "401 with a challenge, RFC 9728 metadata, then tools with a token",
    async () => {
      // Without a token the SDK client cannot connect.
      const anonymous = new Client({ name: "portcullis-interop-anon", version: "1.0.0" });
      await assert.rejects(anonymous.connect(new StreamableHTTPClientTransport(new URL(mcpUrl))));

      // The 401 carries the spec's challenge; the SDK's own helpers read it.
      const res = await fetch(mcpUrl, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json, text/event-stream" },
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "initialize", params: {} }),
      });
      assert.equal(res.status, 401);
      const { resourceMetadataUrl, scope } = extractWWWAuthenticateParams(res);
      await res.body?.cancel();
      assert.ok(resourceMetadataUrl, "resource_metadata in WWW-Authenticate");
      assert.equal(scope, "mcp:tools");
      const metadata = await discoverOAuthProtectedResourceMetadata(new URL(mcpUrl), { resourceMetadataUrl });
      assert.deepEqual(metadata.authorization_servers, [issuer]);
      assert.equal(metadata.resource, `http://${gateway.publicAddr}/mcp`);

      // With a token from that issuer: initialize, list, call.
      const now = Math.floor(Date.now() / 1000);
      const token = hs256({ iss: issuer, aud: "interop", sub: "ts-sdk", scope: "mcp:tools", iat: now, exp: now + 300 }, secret);
      const client = new Client({ name: "portcullis-interop-authed", version: "1.0.0" });
      const transport = new StreamableHTTPClientTransport(new URL(mcpUrl), {
        requestInit: { headers: { Authorization: `Bearer ${token}` } },
      });
      await client.connect(transport);
      const { tools } = await client.listTools();
      assert.ok(tools.some((t) => t.name === "echo"));
      const echo = await client.callTool({ name: "echo", arguments: { message: "with a token" } });
      assert.match(echo.content.map((c) => c.text).join(""), /with a token/);
      await client.close();
    },
    { timeout: TEST_TIMEOUT_MS },
  );
});

describe("a route with a policy: the SDK client sees the filtered list and the refusals", () => {
  let tmp;
  let upstream;
  let gateway;
  let mcpUrl;

  before(
    async () => {
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), "portcullis-interop-policy-"));
      tempDirs.add(tmp);
      upstream = await startEverything();
      fs.writeFileSync(
        path.join(tmp, "policy.yaml"),
        `default: allow
rules:
  - name: hide-env
    effect: hide
    targets: [{tool: get-env}, {tool: "trigger-*"}]
  - name: no-sums
    effect: deny
    targets: [{tool: get-sum}]
transforms:
  tools:
    - {tool: echo, rename: say, description: Says it back}
`,
      );
      const configFile = path.join(tmp, "portcullis.yaml");
      fs.writeFileSync(
        configFile,
        gatewayConfig(upstream.port).replace("    upstream: everything\n", "    upstream: everything\n    policy: policy.yaml\n"),
      );
      gateway = await startGateway(configFile);
      mcpUrl = `http://${gateway.publicAddr}/mcp`;
    },
    { timeout: 2 * STARTUP_DEADLINE_MS + 10_000 },
  );

  after(() => {
    killAllChildren();
  });

  it(
    "hidden tools are absent and unknown, denied ones listed and refused, renames work",
    async () => {
      const client = new Client({ name: "portcullis-interop-policy", version: "1.0.0" });
      await client.connect(new StreamableHTTPClientTransport(new URL(mcpUrl)));
      const { tools } = await client.listTools();
      const names = tools.map((t) => t.name);
      assert.ok(!names.includes("get-env"), `get-env hidden: ${names.join(", ")}`);
      assert.ok(!names.some((n) => n.startsWith("trigger-")), `trigger-* hidden: ${names.join(", ")}`);
      assert.ok(names.includes("get-sum"), "denied tools stay listed");
      assert.ok(names.includes("say") && !names.includes("echo"), "echo renamed to say");
      assert.equal(tools.find((t) => t.name === "say").description, "Says it back");

      await assert.rejects(client.callTool({ name: "get-env", arguments: {} }), (e) => {
        assert.equal(e.code, -32602, `hidden: answered as an unknown tool (${e.message})`);
        assert.match(e.message, /Unknown tool: get-env/);
        return true;
      });
      await assert.rejects(client.callTool({ name: "get-sum", arguments: { a: 1, b: 2 } }), (e) => {
        assert.equal(e.code, -32016, `denied (${e.message})`);
        return true;
      });
      const said = await client.callTool({ name: "say", arguments: { message: "renamed" } });
      assert.match(said.content.map((c) => c.text).join(""), /renamed/);
      await client.close();
    },
    { timeout: TEST_TIMEOUT_MS },
  );
});

describe("over https: the SDK client trusts the test CA (NODE_EXTRA_CA_CERTS) and talks to the TLS listener", () => {
  const tlsDir = process.env.INTEROP_TLS_DIR;
  let tmp;
  let upstream;
  let gateway;

  before(
    async () => {
      assert.ok(tlsDir, "run.sh mints the test CA and sets INTEROP_TLS_DIR");
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), "portcullis-interop-tls-"));
      tempDirs.add(tmp);
      upstream = await startEverything();
      const configFile = path.join(tmp, "portcullis.yaml");
      const tls = `  tls:
    address: 127.0.0.1:0
    certificates:
      - cert_file: ${path.join(tlsDir, "gw.crt")}
        key_file: ${path.join(tlsDir, "gw.key")}
`;
      fs.writeFileSync(configFile, gatewayConfig(upstream.port).replace("  admin: 127.0.0.1:0\n", `  admin: 127.0.0.1:0\n${tls}`));
      gateway = await startGateway(configFile);
      assert.match(gateway.tlsAddr ?? "", /^127\.0\.0\.1:\d+$/, "TLS listener address");
    },
    { timeout: 2 * STARTUP_DEADLINE_MS + 10_000 },
  );

  after(() => {
    killAllChildren();
  });

  it(
    "initialize, list, a call with SSE progress, and DELETE over https",
    async () => {
      const url = new URL(`https://${gateway.tlsAddr}/mcp`);
      const client = new Client({ name: "portcullis-interop-tls", version: "1.0.0" }, { capabilities: {} });
      const transport = new StreamableHTTPClientTransport(url);
      await client.connect(transport);
      assert.equal(typeof transport.sessionId, "string", "a session over TLS");
      const { tools } = await client.listTools();
      assert.ok(tools.some((t) => t.name === "echo"));
      const progress = [];
      const res = await client.callTool(
        { name: "trigger-long-running-operation", arguments: { duration: 1, steps: 3 } },
        undefined,
        { onprogress: (p) => progress.push(p), timeout: TEST_TIMEOUT_MS - 5_000 },
      );
      assert.ok(progress.length >= 2, `progress over TLS: ${JSON.stringify(progress)}`);
      assert.match(res.content[0].text, /^Long running operation completed/);
      await transport.terminateSession();
      assert.equal(transport.sessionId, undefined, "the session ended (DELETE answered 200/204)");
      await client.close();
    },
    { timeout: TEST_TIMEOUT_MS },
  );
});

describe("a federated route over two server-everything members and three rmcp servers with overlapping tools: lists, calls, sampling, elicitation and tasks", () => {
  let tmp;
  const members = [];
  let gateway;
  let client;
  let transport;
  const sampled = [];

  before(
    async () => {
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), "portcullis-interop-fleet-"));
      tempDirs.add(tmp);
      members.push(await startEverything(), await startEverything());
      // Three more members on another SDK, with the same tool names as each other: the
      // rmcp conformance fixture, built with the workspace.
      const fixtureUrls = [];
      for (const n of [1, 2, 3]) {
        const fixture = new Child(`rmcp fixture ${n}`, FIXTURE_BIN, ["--listen", "127.0.0.1:0"], { cwd: HERE, env: process.env });
        fixtureUrls.push(
          await fixture.waitForLine("the fixture's listening line", (line) => {
            const m = /^listening (http:\/\/\S+)$/.exec(line.trim());
            return m ? m[1] : undefined;
          }),
        );
      }
      const configFile = path.join(tmp, "portcullis.yaml");
      fs.writeFileSync(
        configFile,
        `listeners:
  public: 127.0.0.1:0
  admin: 127.0.0.1:0
server:
  threads: 2
  grace_period: 0s
access_log:
  enabled: false
routes:
  - path: /mcp
    name: fleet
    members: [north, south, rust1, rust2, rust3]
upstreams:
  north:
    url: http://127.0.0.1:${members[0].port}/mcp
  south:
    url: http://127.0.0.1:${members[1].port}/mcp
  rust1:
    url: ${fixtureUrls[0]}
  rust2:
    url: ${fixtureUrls[1]}
  rust3:
    url: ${fixtureUrls[2]}
`,
      );
      gateway = await startGateway(configFile);
      client = new Client(
        { name: "portcullis-interop-fleet", version: "1.0.0" },
        { capabilities: { sampling: {}, elicitation: {} } },
      );
      client.setRequestHandler(CreateMessageRequestSchema, async (req) => {
        const text = req.params.messages[0]?.content?.text ?? "";
        sampled.push(text);
        return { model: "interop-model", role: "assistant", content: { type: "text", text: `sampled <${text}>` } };
      });
      client.setRequestHandler(ElicitRequestSchema, async () => ({
        action: "accept",
        content: { name: "Ada Lovelace", check: true },
      }));
      transport = new StreamableHTTPClientTransport(new URL(`http://${gateway.publicAddr}/mcp`));
      await client.connect(transport);
    },
    { timeout: 3 * STARTUP_DEADLINE_MS + 10_000 },
  );

  after(async () => {
    try {
      await client?.close();
    } catch {
      /* best effort */
    }
    killAllChildren();
  });

  it(
    "both members' tools are listed under their prefixes and each call reaches its member",
    async () => {
      assert.equal(typeof transport.sessionId, "string", "one session for the whole fleet");
      assert.equal(client.getServerVersion()?.name, "portcullis fleet");
      const { tools } = await client.listTools();
      const names = tools.map((t) => t.name);
      for (const n of [
        "north__echo",
        "south__echo",
        "north__trigger-sampling-request",
        "south__trigger-elicitation-request",
        "rust1__test_simple_text",
        "rust2__test_simple_text",
        "rust3__test_simple_text",
        "rust1__test_sampling",
      ]) {
        assert.ok(names.includes(n), `${n} in ${names.join(", ")}`);
      }
      assert.ok(!names.includes("echo"), "no unprefixed names");
      const res = await client.callTool({ name: "south__echo", arguments: { message: "to the south" } });
      assert.deepEqual(res.content, [{ type: "text", text: "Echo: to the south" }]);
      // Five members, every name once: the overlapping names apart under their prefixes.
      assert.equal(new Set(names).size, names.length, "no name twice");
      for (const rust of ["rust1", "rust2", "rust3"]) {
        const simple = await client.callTool({ name: `${rust}__test_simple_text`, arguments: {} });
        assert.equal(simple.content[0].type, "text", `${rust} answered`);
      }
    },
    { timeout: TEST_TIMEOUT_MS },
  );

  it(
    "sampling from three members at once (two SDKs): each answer goes back to the member that asked",
    async () => {
      const [north, south, rust] = await Promise.all([
        client.callTool({ name: "north__trigger-sampling-request", arguments: { prompt: "from the north" } }),
        client.callTool({ name: "south__trigger-sampling-request", arguments: { prompt: "from the south" } }),
        client.callTool({ name: "rust1__test_sampling", arguments: { prompt: "from rust" } }),
      ]);
      assert.match(north.content[0].text, /sampled <[^>]*from the north>/, north.content[0].text);
      assert.match(south.content[0].text, /sampled <[^>]*from the south>/, south.content[0].text);
      assert.match(rust.content[0].text, /sampled <from rust>/, rust.content[0].text);
      assert.equal(sampled.length, 3, `one sampling request each: ${JSON.stringify(sampled)}`);
    },
    { timeout: TEST_TIMEOUT_MS },
  );

  it(
    "a task run by one member: created, polled, listed and its result fetched through the gateway",
    async () => {
      const created = await client.request(
        {
          method: "tools/call",
          params: { name: "south__simulate-research-query", arguments: { topic: "gateways" }, task: { ttl: 60_000 } },
        },
        CreateTaskResultSchema,
      );
      const taskId = created.task.taskId;
      assert.match(taskId, /^south~/, `the task id names its member: ${taskId}`);
      const listed = await client.request({ method: "tasks/list", params: {} }, ListTasksResultSchema);
      assert.ok(
        listed.tasks.some((t) => t.taskId === taskId),
        `tasks/list merges the members' tasks: ${JSON.stringify(listed.tasks)}`,
      );
      const deadline = Date.now() + TEST_TIMEOUT_MS - 5_000;
      let task;
      for (;;) {
        task = await client.request({ method: "tasks/get", params: { taskId } }, GetTaskResultSchema);
        assert.equal(task.taskId, taskId, "tasks/get answers with the id the client knows");
        if (task.status === "completed" || task.status === "failed") break;
        assert.ok(Date.now() < deadline, `the task never finished: ${JSON.stringify(task)}`);
        await delay(200);
      }
      assert.equal(task.status, "completed", JSON.stringify(task));
      const result = await client.request({ method: "tasks/result", params: { taskId } }, CallToolResultSchema);
      assert.match(result.content[0].text, /gateways/, "the member's result for its task");
      await assert.rejects(
        client.request({ method: "tasks/get", params: { taskId: "nobody~\"x\"" } }, GetTaskResultSchema),
        "a task id no member owns is refused",
      );
    },
    { timeout: TEST_TIMEOUT_MS },
  );

  it(
    "elicitation from a member is answered by the client's handler",
    async () => {
      const res = await client.callTool({ name: "south__trigger-elicitation-request", arguments: {} });
      const text = res.content.map((c) => c.text).join("\n");
      assert.match(text, /Name: Ada Lovelace/, text);
      assert.match(text, /Agreed to terms: true/, text);
    },
    { timeout: TEST_TIMEOUT_MS },
  );
});

describe("two gateway processes with one session key behind a round-robin balancer: one SDK session served by both", () => {
  let tmp;
  let upstream;
  const gateways = [];
  const served = [0, 0];

  before(
    async () => {
      tmp = fs.mkdtempSync(path.join(os.tmpdir(), "portcullis-interop-replicas-"));
      tempDirs.add(tmp);
      upstream = await startEverything();
      const keyFile = path.join(tmp, "session.key");
      fs.writeFileSync(keyFile, crypto.randomBytes(32).toString("hex"));
      for (const name of ["a", "b"]) {
        const configFile = path.join(tmp, `${name}.yaml`);
        fs.writeFileSync(configFile, `${gatewayConfig(upstream.port)}sessions:\n  key_file: ${keyFile}\n`);
        gateways.push(await startGateway(configFile));
      }
    },
    { timeout: 3 * STARTUP_DEADLINE_MS + 10_000 },
  );

  after(() => {
    killAllChildren();
  });

  it(
    "initialize, list, calls with progress and DELETE, each request to the next replica",
    async () => {
      let next = 0;
      // What a load balancer without sticky sessions does: every request to the next replica.
      const balancer = (url, init) => {
        const i = next++ % gateways.length;
        served[i]++;
        const target = new URL(url);
        target.host = gateways[i].publicAddr;
        return fetch(target, init);
      };
      const client = new Client({ name: "portcullis-interop-replicas", version: "1.0.0" }, { capabilities: {} });
      const transport = new StreamableHTTPClientTransport(new URL(`http://${gateways[0].publicAddr}/mcp`), {
        fetch: balancer,
      });
      await client.connect(transport);
      const sid = transport.sessionId;
      assert.equal(typeof sid, "string");
      const { tools } = await client.listTools();
      assert.ok(tools.some((t) => t.name === "echo"));
      for (let i = 0; i < 4; i++) {
        const res = await client.callTool({ name: "echo", arguments: { message: `call ${i}` } });
        assert.deepEqual(res.content, [{ type: "text", text: `Echo: call ${i}` }]);
      }
      const progress = [];
      const long = await client.callTool(
        { name: "trigger-long-running-operation", arguments: { duration: 1, steps: 2 } },
        undefined,
        { onprogress: (p) => progress.push(p), timeout: TEST_TIMEOUT_MS - 5_000 },
      );
      assert.match(long.content[0].text, /^Long running operation completed/);
      assert.ok(served[0] >= 3 && served[1] >= 3, `both replicas served the session: ${served}`);
      assert.equal(transport.sessionId, sid, "one session throughout");
      await transport.terminateSession();
      await client.close();
    },
    { timeout: TEST_TIMEOUT_MS },
  );
});
