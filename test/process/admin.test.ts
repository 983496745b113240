// `bun run admin` as an operator runs it, beside a broker running as its own process (started under a service's
// umask 022): the sessions listed, a revocation that ends a live session, and a drain followed to its end.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, lstatSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { adminSocketPath, ExitCode, type SessionsAnswer } from "../../src/admin/protocol.ts";
import { startFakeForgejo, type FakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { startBrokerProcess, type BrokerProcess } from "../helpers/broker-process.ts";
import { childCommand, mcpPost, openSession, postMcp } from "../helpers/mcp.ts";
import { modernHeaders, modernRequest, onlyMessage } from "../helpers/modern-client.ts";
import { waitWhile } from "../helpers/promises.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { outputLines } from "../helpers/output.ts";

const REPO_ROOT = join(import.meta.dir, "..", "..");

let forgejo: FakeForgejo;
let dataDir: string;
let broker: BrokerProcess;
beforeAll(async () => {
  forgejo = await startFakeForgejo();
  dataDir = mkdtempSync(join(tmpdir(), "fmb-admin-"));
  broker = await startBrokerProcess(forgejo, dataDir, { BROKER_CHILD_COMMAND: childCommand() }, { umask: 0o022 });
});
afterAll(async () => {
  await broker.stop();
  await forgejo.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

/** `bun run admin -- …` from the checkout, with the broker's BROKER_DATA_DIR and nothing else of its environment. */
function admin(...args: string[]) {
  const proc = Bun.spawn([process.execPath, "run", "admin", "--", ...args], {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH ?? "", BROKER_DATA_DIR: dataDir },
    stdout: "pipe",
    stderr: "pipe",
  });
  return { proc, stdout: outputLines(proc.stdout), stderr: outputLines(proc.stderr) };
}

async function adminOutput(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const { proc, stdout, stderr } = admin(...args);
  const code = await proc.exited;
  await Promise.all([stdout.waitFor(() => false), stderr.waitFor(() => false)]);
  return { code, out: stdout.lines.join("\n"), err: stderr.lines.join("\n") };
}

const echo = (token: string, sessionId: string) =>
  postMcp(broker.mcpUrl, token, { jsonrpc: "2.0", id: 3, method: "tools/call", params: { name: "echo", arguments: { text: "hi" } } }, { "mcp-session-id": sessionId });
/** A 2026-07-28 tools/call: served by the grant's principal child, started on first use. */
const modernWhoami = (token: string) => {
  const body = modernRequest(1, "tools/call", { name: "whoami", arguments: {} });
  return fetch(mcpPost(broker.mcpUrl, token, body, modernHeaders(body)));
};
const alive = (pid: number) => existsSync(`/proc/${pid}`);

describe("bun run admin against a running broker", () => {
  test("its socket is 0600 under the service's umask 022", () => {
    expect((lstatSync(adminSocketPath(dataDir)).mode & 0o777).toString(8)).toBe("600");
  });

  test("sessions lists the live session; revoke --user ends it: its next request is refused 401", async () => {
    forgejo.setCurrentUser("alice");
    const { accessToken } = await obtainTokens(broker.url);
    const sessionId = await openSession(broker.mcpUrl, accessToken);

    const listed = await adminOutput("sessions", "--json");
    expect(listed.code).toBe(ExitCode.ok);
    const { sessions } = JSON.parse(listed.out) as SessionsAnswer;
    expect(sessions.map((row) => [row.era, row.user, row.id])).toEqual([["legacy", "alice", sessionId]]);
    expect(sessions[0]!.rssBytes).toBeGreaterThan(0);

    const revoked = await adminOutput("revoke", "--user", "alice");
    expect(revoked).toMatchObject({ code: ExitCode.ok, out: expect.stringMatching(/^revoked 1 grant, ending 1 live session: /) });
    expect((await echo(accessToken, sessionId)).status).toBe(401);
    expect(JSON.parse((await adminOutput("sessions", "--json")).out)).toEqual({ sessions: [], partial: false });
  });

  test("revoke --client ends that client's legacy session and principal child: its token gets 401, the child processes are gone; another client's session serves on", async () => {
    forgejo.setCurrentUser("alice");
    const alice = await obtainTokens(broker.url);
    const aliceSession = await openSession(broker.mcpUrl, alice.accessToken);
    expect((await onlyMessage(await modernWhoami(alice.accessToken))).result.resultType).toBe("complete");
    forgejo.setCurrentUser("bob");
    const bob = await obtainTokens(broker.url);
    const bobSession = await openSession(broker.mcpUrl, bob.accessToken);

    const alices = (JSON.parse((await adminOutput("sessions", "--json")).out) as SessionsAnswer).sessions.filter((row) => row.user === "alice");
    expect(alices.map((row) => row.era).sort()).toEqual(["legacy", "modern"]);
    const pids = alices.map((row) => row.pid!);
    expect(pids.filter(alive)).toEqual(pids);

    const revoked = await adminOutput("revoke", "--client", alice.clientId);
    expect(revoked).toMatchObject({ code: ExitCode.ok, out: `revoked 1 grant, ending 2 live sessions: ${alices[0]!.grantId}` });
    expect((await echo(alice.accessToken, aliceSession)).status).toBe(401);
    expect((await modernWhoami(alice.accessToken)).status).toBe(401);
    // Each child is stopped with SIGTERM, then SIGKILL after its grace: gone within seconds.
    await waitWhile(() => pids.some(alive), 100, 100);
    expect(pids.filter(alive)).toEqual([]);

    expect((await echo(bob.accessToken, bobSession)).status).toBe(200);
    const left = (JSON.parse((await adminOutput("sessions", "--json")).out) as SessionsAnswer).sessions;
    expect(left.map((row) => [row.user, row.id])).toEqual([["bob", bobSession]]);
    // The drain below counts this broker's children: bob's session ends here.
    expect((await fetch(broker.mcpUrl, { method: "DELETE", headers: { authorization: `Bearer ${bob.accessToken}`, "mcp-session-id": bobSession } })).status).toBe(204);
  }, 30_000); // Three sign-ins, three children started and two stopped, four admin processes: seconds on a loaded machine.

  test("drain reports the child left, refuses new sessions, and exits 0 once the client has ended its session", async () => {
    forgejo.setCurrentUser("bob");
    const { accessToken } = await obtainTokens(broker.url);
    const sessionId = await openSession(broker.mcpUrl, accessToken);

    const drain = admin("drain");
    expect(await drain.stdout.waitFor((line) => line.startsWith("draining"))).toBe("draining: 1 child left");
    const refused = await postMcp(broker.mcpUrl, accessToken, { jsonrpc: "2.0", id: 1, method: "initialize", params: { protocolVersion: "2025-11-25", capabilities: {}, clientInfo: { name: "x", version: "1" } } });
    expect(refused.status).toBe(503);
    expect(refused.headers.get("retry-after")).toBe("30");

    const deleted = await fetch(broker.mcpUrl, { method: "DELETE", headers: { authorization: `Bearer ${accessToken}`, "mcp-session-id": sessionId } });
    expect(deleted.status).toBe(204);
    expect(await drain.proc.exited).toBe(ExitCode.ok);
    await drain.stdout.waitFor(() => false);
    expect(drain.stdout.lines.at(-1)).toBe("drained: no children left");
  });
});
