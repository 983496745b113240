// The package as another project gets it: npm pack, bun add of the tarball into a fresh project, the README's
// example as its test file, bun test there passes, and nothing it started is left running.
import { afterAll, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { processesMatching } from "../helpers/mcp.ts";

const REPO_ROOT = join(import.meta.dir, "..", "..");
const work = mkdtempSync(join(tmpdir(), "fmb-pack-"));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** The first ts block under the README's "Testing your MCP client with the broker" heading. */
async function readmeExample(): Promise<string> {
  const readme = await Bun.file(join(REPO_ROOT, "README.md")).text();
  const section = readme.split("\n## Testing your MCP client with the broker\n")[1]?.split("\n## ")[0];
  const example = section === undefined ? undefined : /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  if (example === undefined) throw new Error("the README has no ts example under its testing section");
  return example;
}

async function run(argv: string[], cwd: string): Promise<{ exitCode: number; output: string }> {
  const child = Bun.spawn(argv, { cwd, stdout: "pipe", stderr: "pipe", env: { ...process.env, NO_COLOR: "1" } });
  const [stdout, stderr, exitCode] = await Promise.all([new Response(child.stdout).text(), new Response(child.stderr).text(), child.exited]);
  return { exitCode, output: stdout + stderr };
}

// Generous: bun add fetches the package's dependencies from the npm registry.
test("the packed package installs with bun add and the README's example passes under bun test, leaving no process", async () => {
  const packed = await run(["npm", "pack", "--pack-destination", work], REPO_ROOT);
  expect(packed.exitCode, packed.output).toBe(0);
  const tarball = join(work, readdirSync(work).find((name) => name.endsWith(".tgz"))!);

  const project = join(work, "project");
  mkdirSync(project);
  await Bun.write(join(project, "package.json"), JSON.stringify({ name: "uses-the-broker", private: true, type: "module" }));
  const added = await run([process.execPath, "add", "--dev", tarball], project);
  expect(added.exitCode, added.output).toBe(0);

  await Bun.write(join(project, "client.test.ts"), await readmeExample());
  const tested = await run([process.execPath, "test"], project);
  expect(tested.exitCode, tested.output).toBe(0);
  expect(tested.output).toMatch(/^ [1-9]\d* pass$/m);
  expect(tested.output).toMatch(/^ 0 fail$/m);
  expect(await processesMatching(project)).toEqual([]);
}, 300_000);
