// Checks requests against Discord's OpenAPI description, for the fake Discord (tests/fakes/discord_spec.py).
//
// The description is the pinned npm package `discord-api-spec` (package.json; MIT): Zod schemas and
// TypeScript types generated from github.com/discord/discord-api-spec. From its types this reads, per
// route and method, the request body's schemas and the query parameters Discord knows; the bodies are
// checked with its Zod schemas (types, formats, lengths, counts, required fields, enums).
//
// Protocol: one JSON object per line on stdin, {"method", "path", "query": [names], "body"} (path
// without /api/v10; body null when there is none), one answer per line on stdout:
// {"route": template or null, "problems": [strings]}.

import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const build = join(here, "node_modules", "discord-api-spec", "build");

// The schemas, as Discord applies them: unknown fields are ignored (Discord ignores them: discord.py sends
// `tts` on every edit), and a snowflake may come as a JSON number as well as a string (Discord accepts
// both: discord.py sends a new attachment's index as a number). The package is not an ES module by its
// package.json, so a copy of its schema module is imported, with that one definition widened.
const source = readFileSync(join(build, "discord-api-spec.zod.js"), "utf8");
const snowflake = /export const SnowflakeTypeSchema = ([^;]*);/;
if (!snowflake.test(source)) throw new Error("discord-api-spec changed SnowflakeTypeSchema: update validate.mjs");
const patched = source.replace(
  snowflake,
  "export const SnowflakeTypeSchema = z.union([$1, z.number().check(z.minimum(0))]);",
);
const copyPath = join(build, "discord-api-spec.checked.zod.mjs");
writeFileSync(copyPath, patched);
const schemas = await import(copyPath);

// Routes: `export interface Paths { "/route": { get: { parameters: { query?: {...} }, requestBody?: T; ...`
const types = readFileSync(join(build, "discord-api-spec.ts"), "utf8");
const pathsAt = types.indexOf("export interface Paths {");
const pathsText = types.slice(pathsAt, types.indexOf("\n}\n", pathsAt));
const routes = [];
for (const block of pathsText.split(/\n  (?="\/)/).slice(1)) {
  const template = block.slice(1, block.indexOf('"', 1));
  const pattern = new RegExp(
    "^" + template.replace(/[.*+?^$()|[\]\\]/g, "\\$&").replace(/\{[^}]+\}/g, "[^/]+") + "$",
  );
  const methods = {};
  for (const op of block.split(/\n    (?=(?:get|put|post|patch|delete): \{)/).slice(1)) {
    const method = op.slice(0, op.indexOf(":")).toUpperCase();
    const queryMatch = op.match(/\n        query\?: \{([\s\S]*?)\n        \};/);
    const query = queryMatch ? [...queryMatch[1].matchAll(/^\s*([a-z_0-9]+)\?:/gm)].map((m) => m[1]) : [];
    const bodyMatch = op.match(/\n      requestBody\?:([\s\S]*?);\n      responses/);
    const bodyType = bodyMatch ? bodyMatch[1].replace(/\s+/g, " ").trim() : "undefined";
    methods[method] = { query, bodyType };
  }
  routes.push({ template, pattern, methods, literal: !template.includes("{") });
}
// a literal segment wins over a parameter ("/messages/@original" before "/messages/{message_id}")
routes.sort((a, b) => Number(b.literal) - Number(a.literal));

function bodySchemas(bodyType) {
  // "A | B", "A[] | null", "A": the named schemas, and whether the body is a list of them
  const names = bodyType.split("|").map((t) => t.trim()).filter((t) => t && t !== "null");
  return names.map((name) => {
    const list = name.endsWith("[]");
    const bare = list ? name.slice(0, -2) : name;
    return { name: bare, list, schema: schemas[`${bare}Schema`] };
  });
}

function flatten(issues, prefix = []) {
  // a union's issue holds each branch's issues: the branch that came closest says what is wrong
  const out = [];
  for (const issue of issues) {
    const path = [...prefix, ...issue.path];
    if (issue.code === "invalid_union" && Array.isArray(issue.errors) && issue.errors.length) {
      const closest = issue.errors.reduce((a, b) => (b.length < a.length ? b : a));
      out.push(...flatten(closest, path));
    } else {
      const extra = issue.keys ? ` (${issue.keys.join(", ")})` : "";
      out.push({ path, message: issue.message + extra });
    }
  }
  return out;
}

function describe(issues) {
  return flatten(issues)
    .slice(0, 5)
    .map((i) => `${i.path.join(".") || "(body)"}: ${i.message}`);
}

function check({ method, path, query, body }) {
  const route = routes.find((r) => r.pattern.test(path) && r.methods[method]);
  if (!route) {
    const known = routes.some((r) => r.pattern.test(path));
    return { route: null, problems: [known ? `${method} is not a method of ${path}` : `no route ${path}`] };
  }
  const op = route.methods[method];
  const problems = [];
  for (const name of query || []) {
    if (!op.query.includes(name)) problems.push(`unknown query parameter ${name}`);
  }
  if (op.bodyType === "undefined") {
    if (body !== null && body !== undefined) problems.push("this route takes no body");
    return { route: route.template, problems };
  }
  if (body === null || body === undefined) return { route: route.template, problems };
  const candidates = bodySchemas(op.bodyType);
  if (candidates.length === 0 || candidates.some((c) => !c.schema)) {
    // an inline object type: the package has no schema for it (none of the bot's routes)
    return { route: route.template, problems };
  }
  let best = null;
  for (const c of candidates) {
    const value = c.list ? body : body;
    if (c.list && !Array.isArray(value)) continue;
    const items = c.list ? value : [value];
    const failures = [];
    items.forEach((item, index) => {
      const result = c.schema.safeParse(item);
      if (!result.success) {
        for (const issue of result.error.issues) {
          failures.push({ ...issue, path: c.list ? [index, ...issue.path] : issue.path });
        }
      }
    });
    if (failures.length === 0) return { route: route.template, problems };
    if (best === null || failures.length < best.failures.length) best = { name: c.name, failures };
  }
  if (best === null) problems.push(`the body is not what ${op.bodyType} expects`);
  else problems.push(...describe(best.failures).map((p) => `${best.name}: ${p}`));
  return { route: route.template, problems };
}

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  let answer;
  try {
    answer = check(JSON.parse(line));
  } catch (error) {
    answer = { route: null, problems: [`validator error: ${error}`] };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
