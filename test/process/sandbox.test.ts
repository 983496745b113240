// The sandbox as an attacker meets it: an evil child run for two users by a broker in its own process reports
// what it could see and do; then the whole process table is searched for what is left of the children's trees
// after a DELETE and after a kill -9 of the broker.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startFakeForgejo, type FakeForgejo } from "../../src/testing/forgejo-stand-in.ts";
import { startBrokerProcess, type BrokerProcess } from "../helpers/broker-process.ts";
import { isAlive, openSession, postMcp, processesMatching, type ProcessRow } from "../helpers/mcp.ts";
import { obtainTokens } from "../../src/testing/oauth-client.ts";
import { waitWhile } from "../helpers/promises.ts";

const EVIL_CHILD = join(import.meta.dir, "..", "fixtures", "evil-child.ts");
const marker = `--evil-${crypto.randomUUID()}`;
// Places outside /tmp the child tries to write in (the repository is bound into the sandbox for bun's sake).
const WRITE_DIRS = ["/", "/etc", "/var/tmp", join(import.meta.dir, "..", "fixtures")];

interface Report {
  uid: number;
  ownToken: string;
  grandchildName: string;
  proc: string[];
  cmdlines: Record<string, string>;
  environs: Record<string, string>;
  parentEnviron: unknown;
  dataDir: unknown;
  sealingKey: unknown;
  database: unknown;
  writes: Record<string, unknown>;
  tmpWrite: unknown;
}

interface UserSession {
  login: string;
  token: string;
  id: string;
  report: Report;
}

/** The processes descending from `root` (itself included), by their parent pids in one reading of the table. */
function treeOf(rows: ProcessRow[], root: number): ProcessRow[] {
  const tree = new Set([root]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const row of rows) {
      if (!tree.has(row.pid) && tree.has(row.ppid)) grew = tree.add(row.pid) !== null;
    }
  }
  return rows.filter((row) => tree.has(row.pid));
}

describe("an evil child, for alice and for bob", () => {
  let forgejo: FakeForgejo;
  let dataDir: string;
  let broker: BrokerProcess;
  const sessions: UserSession[] = [];

  beforeAll(async () => {
    forgejo = await startFakeForgejo();
    dataDir = mkdtempSync(join(tmpdir(), "fmb-evil-"));
    broker = await startBrokerProcess(forgejo, dataDir, {
      BROKER_CHILD_COMMAND: [process.execPath, EVIL_CHILD, marker, dataDir, ...WRITE_DIRS].join(" "),
      BROKER_CHILD_STOP_GRACE_S: "1",
    });
    for (const login of ["alice", "bob"]) {
      forgejo.setCurrentUser(login);
      const { accessToken } = await obtainTokens(broker.url);
      const id = await openSession(broker.mcpUrl, accessToken);
      sessions.push({ login, token: accessToken, id, report: null as unknown as Report });
    }
    // Both children are running when each one looks around.
    for (const session of sessions) {
      const response = await postMcp(broker.mcpUrl, session.token, { jsonrpc: "2.0", id: 2, method: "tools/call", params: { name: "report", arguments: {} } }, {
        "mcp-session-id": session.id,
        accept: "application/json",
      });
      const answer = (await response.json()) as { result: { content: { text: string }[] } };
      session.report = JSON.parse(answer.result.content[0]!.text) as Report;
    }
  });

  afterAll(async () => {
    if (isAlive(broker.pid)) process.kill(broker.pid, "SIGKILL");
    await forgejo.stop();
    rmSync(dataDir, { recursive: true, force: true });
    for (const dir of WRITE_DIRS) rmSync(join(dir, `evil${marker}`), { force: true });
  });

  test("each child has its own Forgejo token in its environment and no trace of the other user's", () => {
    const [alice, bob] = sessions as [UserSession, UserSession];
    for (const [session, other] of [[alice, bob], [bob, alice]] as const) {
      expect(forgejo.issuedAccessTokens(session.login)).toContain(session.report.ownToken);
      const seen = JSON.stringify(session.report);
      for (const token of forgejo.issuedAccessTokens(other.login)) expect(seen).not.toContain(token);
    }
  });

  test("each child sees only its own processes: its sandbox's init, itself and its grandchild; and runs as another uid", () => {
    for (const { report } of sessions) {
      expect(report.uid).toBe(65534);
      // bwrap's init carries the command it runs in its own command line.
      const cmdlines = Object.values(report.cmdlines).filter((cmdline) => !/^\S*bwrap /.test(cmdline));
      expect(cmdlines.filter((cmdline) => cmdline.includes(EVIL_CHILD))).toHaveLength(1);
      expect(cmdlines.filter((cmdline) => !cmdline.includes(EVIL_CHILD) && !cmdline.startsWith(report.grandchildName))).toEqual([]);
      expect(report.proc.length).toBeLessThanOrEqual(4);
    }
  });

  test("no child sees the broker's secrets, its data directory, its sealing key or its database", () => {
    const sealingKey = readFileSync(join(dataDir, "sealing.key")).toString("base64");
    for (const { report } of sessions) {
      const seen = JSON.stringify(report);
      expect(seen).not.toContain(forgejo.clientSecret);
      expect(seen).not.toContain(sealingKey);
      expect(report.dataDir).toEqual({ error: expect.stringContaining("ENOENT") });
      expect(report.sealingKey).toEqual({ error: expect.any(String) });
      expect(report.database).toEqual({ error: expect.any(String) });
    }
  });

  test("no child can write outside /tmp, and /tmp is its own", () => {
    for (const { report } of sessions) {
      expect(Object.entries(report.writes).filter(([, result]) => result === "written")).toEqual([]);
      expect(report.tmpWrite).toBe("written");
    }
  });

  test("after DELETE nothing of the child's tree is left anywhere, setsid grandchild included; the other child lives on", async () => {
    const [alice, bob] = sessions as [UserSession, UserSession];
    const started = (session: UserSession) =>
      broker
        .log()
        .split("\n")
        .filter((line) => line.includes('"msg":"child started"') && line.includes(session.id))
        .map((line) => (JSON.parse(line) as { pid: number }).pid)[0]!;
    const before = await processesMatching(marker);
    const aliceTree = treeOf(before, started(alice));
    const bobTree = treeOf(before, started(bob));
    expect(aliceTree.some((row) => row.args.startsWith(alice.report.grandchildName))).toBe(true);
    expect(bobTree.some((row) => row.args.startsWith(bob.report.grandchildName))).toBe(true);

    const deleted = await fetch(broker.mcpUrl, { method: "DELETE", headers: { authorization: `Bearer ${alice.token}`, "mcp-session-id": alice.id } });
    expect(deleted.status).toBe(204);
    const leftOf = async (tree: ProcessRow[]) => {
      const pids = new Set(tree.map((row) => row.pid));
      return (await processesMatching(marker)).filter((row) => pids.has(row.pid));
    };
    // The child ignores SIGTERM and stdin's end: it goes at the stop grace (1 s).
    await waitWhile(async () => (await leftOf(aliceTree)).length > 0, 100, 50);
    expect(await leftOf(aliceTree)).toEqual([]);
    expect((await leftOf(bobTree)).length).toBe(bobTree.length);
  });

  test("after a kill -9 of the broker nothing of any child's tree is left anywhere", async () => {
    expect((await processesMatching(marker)).length).toBeGreaterThan(0);
    process.kill(broker.pid, "SIGKILL");
    await waitWhile(async () => (await processesMatching(marker)).length > 0, 100, 50);
    expect(await processesMatching(marker)).toEqual([]);
  });
});
