// Quickstart: a real MCP client (the official TypeScript SDK) against a Portcullis URL.
//   PORTCULLIS_TOKEN=$(portcullis token) node tests/interop/quickstart.mjs http://127.0.0.1:8080/mcp
// The token (from the environment or the second argument) is sent as a bearer token.
// Initializes a session, lists the tools, calls `echo`, calls `slow` while printing the
// progress notifications as they stream through the gateway, then ends the session.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const url = new URL(process.argv[2] ?? "http://127.0.0.1:8080/mcp");
const token = process.argv[3] ?? process.env.PORTCULLIS_TOKEN;
const transport = new StreamableHTTPClientTransport(url, {
  requestInit: token ? { headers: { Authorization: `Bearer ${token}` } } : undefined,
});
const client = new Client({ name: "portcullis-quickstart", version: "1.0.0" });

await client.connect(transport);
console.log(`connected to ${url} (session ${transport.sessionId})`);

const { tools } = await client.listTools();
console.log("tools:", tools.map((t) => t.name).join(", "));

const echo = await client.callTool({ name: "echo", arguments: { text: "hello through Portcullis" } });
console.log("echo ->", echo.content.map((c) => c.text).join(""));

const slow = await client.callTool(
  { name: "slow", arguments: { steps: 3, delay_ms: 300 } },
  undefined,
  { onprogress: (p) => console.log(`  progress ${p.progress}/${p.total}: ${p.message ?? ""}`) },
);
console.log("slow ->", slow.content.map((c) => c.text).join(""));

await transport.terminateSession();
await client.close();
console.log("session ended");
