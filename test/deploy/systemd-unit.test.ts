// deploy/forgejo-mcp-broker.service as systemd reads it: `systemd-analyze verify` on a copy whose ExecStart names a
// binary this machine has (the unit's /opt path is the install's), with nothing to say — no unknown key, no bad value.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const UNIT = join(import.meta.dir, "..", "..", "deploy", "forgejo-mcp-broker.service");

/** The unit with its ExecStart's program replaced by `program`; its arguments kept. */
function withProgram(unit: string, program: string): string {
  const execStart = /^ExecStart=(\S+)(.*)$/m;
  if (!execStart.test(unit)) throw new Error("the unit has no ExecStart line");
  return unit.replace(execStart, `ExecStart=${program}$2`);
}

async function verify(unitText: string): Promise<{ code: number; said: string }> {
  const systemdAnalyze = Bun.which("systemd-analyze");
  if (systemdAnalyze === null) throw new Error("systemd-analyze is not on PATH: install systemd (apt-get install systemd) to check deploy/forgejo-mcp-broker.service");
  const dir = mkdtempSync(join(tmpdir(), "fmb-unit-"));
  try {
    const path = join(dir, "forgejo-mcp-broker.service");
    writeFileSync(path, unitText);
    const run = Bun.spawn([systemdAnalyze, "verify", path], { stdout: "pipe", stderr: "pipe" });
    const [code, out, err] = await Promise.all([run.exited, new Response(run.stdout).text(), new Response(run.stderr).text()]);
    return { code, said: `${out}${err}`.trim() };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe("deploy/forgejo-mcp-broker.service", () => {
  const unit = readFileSync(UNIT, "utf8");

  test("systemd-analyze verify passes it with nothing to say (its ExecStart pointed at this machine's bun)", async () => {
    expect(unit).toContain("ExecStart=/opt/forgejo-mcp-broker/node_modules/.bin/bun run src/index.ts");
    expect(await verify(withProgram(unit, process.execPath))).toEqual({ code: 0, said: "" });
  }, 30_000); // systemd-analyze loads the whole unit tree: seconds on a loaded machine.

  test("the check is not blind: a misspelt directive is reported", async () => {
    const misspelt = withProgram(unit, process.execPath).replace("ProtectHome=true", "ProtectHomeDir=true");
    const { said } = await verify(misspelt);
    expect(said).toContain("Unknown key 'ProtectHomeDir' in section [Service]");
  }, 30_000);
});
