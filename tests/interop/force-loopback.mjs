// Preload for the upstream fixture (server-everything): forces every TCP
// net.Server.listen() that does not name a host onto 127.0.0.1 (override with
// BIND_HOST). server-everything calls `app.listen(PORT)`, which would otherwise
// bind all interfaces (:: / 0.0.0.0); the interop tests must never expose it.
//
// Usage: node --import ./force-loopback.mjs node_modules/@modelcontextprotocol/server-everything/dist/index.js streamableHttp
// (or NODE_OPTIONS="--import /abs/path/force-loopback.mjs"). Needs Node >= 20.6.
import net from "node:net";

const HOST = process.env.BIND_HOST || "127.0.0.1";
const origListen = net.Server.prototype.listen;

net.Server.prototype.listen = function (...args) {
  const a0 = args[0];
  if (a0 !== null && typeof a0 === "object" && !Array.isArray(a0)) {
    // listen(options[, cb]): leave unix sockets, handles, fds and explicit hosts alone.
    if (a0.path === undefined && a0.handle === undefined && a0._handle === undefined &&
        a0.fd === undefined && a0.host === undefined) {
      args[0] = { ...a0, host: HOST };
    }
  } else if (typeof a0 === "number" || (typeof a0 === "string" && /^\d+$/.test(a0))) {
    // listen(port[, host][, backlog][, cb])
    if (typeof args[1] !== "string") args.splice(1, 0, HOST);
  } else if (a0 === undefined || typeof a0 === "function") {
    // listen() / listen(cb): random port on HOST
    args.splice(0, a0 === undefined ? 1 : 0, 0, HOST);
  }
  return origListen.apply(this, args);
};
