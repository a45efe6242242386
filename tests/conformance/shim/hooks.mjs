// Module resolution hooks registered by ./register.mjs: inside the conformance package,
// `fs` / `node:fs` resolve to ./fs-globsync.mjs. Every other import is left alone.
const SHIM = new URL("./fs-globsync.mjs", import.meta.url).href;
const PACKAGES = ["/node_modules/conformance-next/", "/node_modules/@modelcontextprotocol/conformance/"];

export async function resolve(specifier, context, next) {
  const parent = context.parentURL ?? "";
  if ((specifier === "fs" || specifier === "node:fs") && PACKAGES.some((p) => parent.includes(p))) {
    return { url: SHIM, shortCircuit: true };
  }
  return next(specifier, context);
}
