// node:fs plus a minimal globSync (`*`, `**`, `?`; string or array patterns; `cwd` option),
// standing in for the fs.globSync that Node 20 lacks. See ./register.mjs.
import fs from "node:fs";
import path from "node:path";

export * from "node:fs";
export default fs;

function toRegExp(glob) {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*" && glob[i + 1] === "*") {
      i++;
      if (glob[i + 1] === "/") {
        i++;
        re += "(?:.*/)?";
      } else {
        re += ".*";
      }
    } else if (c === "*") {
      re += "[^/]*";
    } else if (c === "?") {
      re += "[^/]";
    } else {
      re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
    }
  }
  return new RegExp(`^${re}$`);
}

export const globSync =
  fs.globSync ??
  function globSync(pattern, options = {}) {
    const cwd = options.cwd ? String(options.cwd) : process.cwd();
    const patterns = (Array.isArray(pattern) ? pattern : [pattern]).map(toRegExp);
    let entries;
    try {
      entries = fs.readdirSync(cwd, { recursive: true });
    } catch {
      return [];
    }
    return entries
      .map((e) => String(e).split(path.sep).join("/"))
      .filter((e) => patterns.some((re) => re.test(e)));
  };
